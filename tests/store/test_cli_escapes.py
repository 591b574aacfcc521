"""Data never sends terminal commands: control bytes in values print escaped.

Reproduced before: `l2s sql` printed raw ESC bytes from stored text to the terminal (colours,
cursor moves, a changed window title).
"""

from __future__ import annotations

import io

import pyarrow as pa
from typer.testing import CliRunner

from l2s_data.cli import app
from l2s_data.cli._common import printable
from l2s_data.cli.store import _write_csv, _write_json

from .conftest import sample_ids, tables

EVIL = "red\x1b[31m!\x1b]0;pwned\x07\x9b2J\rend"


def test_printable_escapes_every_control_character_but_newline_and_tab():
    assert printable(EVIL) == "red\\x1b[31m!\\x1b]0;pwned\\x07\\x9b2J\\x0dend"
    assert printable("a\tb\nc é [/INST]") == "a\tb\nc é [/INST]"


def test_sql_table_prints_control_bytes_escaped(store):
    ids = sample_ids(2)
    samples, memberships = tables(ids)
    samples = samples.set_column(samples.schema.get_field_index("query"), "query", pa.array([EVIL, "plain"]))
    store.put("samples", samples, memberships=memberships)
    r = CliRunner().invoke(app, ["sql", "SELECT query FROM samples ORDER BY sample_id", "--store", store.url])
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output and "\x9b" not in r.output
    assert "\\x1b[31m" in r.output


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_csv_and_json_escape_control_bytes_on_a_terminal_and_keep_them_in_files():
    batch = pa.record_batch({"q": [EVIL]})
    for write in (_write_csv, _write_json):
        tty, plain = _Terminal(), io.StringIO()
        write(tty, ["q"], [batch])
        write(plain, ["q"], [batch])
        assert not any(c in tty.getvalue() for c in "\x1b\x07\x9b\r"), write
    plain = io.StringIO()
    _write_csv(plain, ["q"], [batch])
    assert EVIL in plain.getvalue()  # a file or a pipe gets the data as stored
