"""`l2s sql` and the catalog under limits: time, Ctrl-C, memory, printed rows, verbatim values."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from l2s_data.cli import app
from l2s_data.errors import SQLMemoryError, SQLRefusedError, SQLTimeoutError, StoreError
from l2s_data.store.limits import SQLLimits, parse_size

from .conftest import sample_ids, tables

runner = CliRunner()

#: Never ends: each step of the recursion feeds the next.
RUNAWAY = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) AS n FROM r"
RUNAWAY_ROWS = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r"
#: Sorting 2M md5 strings needs well over 64 MB.
BIG_SORT = ("SELECT max(s) AS m, count(*) AS n FROM "
            "(SELECT md5(i::VARCHAR) AS s FROM range(2000000) t(i) ORDER BY s)")


def _l2s(*args: str):
    return runner.invoke(app, list(args))


# --- time ---------------------------------------------------------------------------------


def test_a_runaway_query_stops_at_its_timeout_and_the_catalog_still_answers(store):
    with store.catalog() as cat:
        with pytest.raises(SQLTimeoutError, match=r"time limit of 0.5 s") as err:
            cat.query(RUNAWAY, timeout_s=0.5)
        assert isinstance(err.value, TimeoutError) and "--timeout" in str(err.value)
        assert cat.query("SELECT 42 AS x")["x"].to_pylist() == [42]


def test_the_timeout_covers_a_streamed_result_to_its_last_batch(store):
    with store.catalog(limits=SQLLimits(timeout_s=0.5)) as cat:
        with pytest.raises(SQLTimeoutError):
            cat.head(RUNAWAY_ROWS, 10)
        with pytest.raises(SQLTimeoutError):
            with cat.stream(RUNAWAY_ROWS) as rows:
                for _ in rows:
                    pass
        assert cat.head("SELECT 1 AS one", 10).table["one"].to_pylist() == [1]


def test_the_cli_timeout_stops_a_runaway_query_with_a_clear_message(store):
    r = _l2s("sql", RUNAWAY, "--store", store.url, "--timeout", "0.5")
    assert r.exit_code == 1
    assert "time limit of 0.5 s" in r.output and "--timeout" in r.output
    assert "Traceback" not in r.output


@pytest.mark.slow
def test_ctrl_c_stops_a_running_query_in_a_real_l2s_process(store):
    cmd = [sys.executable, "-c", "from l2s_data.cli import main; main()",
           "sql", RUNAWAY, "--store", store.url, "--timeout", "600"]
    # The child gets SIGINT's default disposition, as a shell gives it: an ignored SIGINT is
    # inherited across exec, and a library of this test process (Ray) may have ignored it.
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in p.stderr], daemon=True)
    reader.start()
    try:
        # The process says on stderr once its query is running: wait for that line (generously).
        line = lines.get(timeout=300)
        assert "still running" in line and "Ctrl-C" in line, line
        sent = time.monotonic()
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=120)
        stopped_after = time.monotonic() - sent
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    reader.join(timeout=60)
    err = "".join(lines.queue)
    assert rc == 130, err
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err
    assert stopped_after < 20, f"took {stopped_after:.1f} s to stop after SIGINT"


# --- memory -------------------------------------------------------------------------------


def test_memory_is_limited_and_spilling_is_off_by_default(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an unconfined in-memory DuckDB would spill into ./.tmp
    with store.catalog(limits=SQLLimits(memory_limit="64MB")) as cat:
        got = cat.query("SELECT current_setting('temp_directory') AS t")["t"][0].as_py()
        assert got == ""
        with pytest.raises(SQLMemoryError, match="--memory-limit") as err:
            cat.query(BIG_SORT)
        assert isinstance(err.value, MemoryError)
        assert cat.query("SELECT 1 AS one")["one"].to_pylist() == [1]
    assert not os.path.exists(tmp_path / ".tmp")


def test_spilling_goes_to_a_private_folder_that_is_removed_on_close(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with store.catalog(limits=SQLLimits(memory_limit="64MB", spill="2GB")) as cat:
        folder = cat.query("SELECT current_setting('temp_directory') AS t")["t"][0].as_py()
        assert os.path.isdir(folder) and "l2s-sql-spill-" in os.path.basename(folder)
        assert cat.query(BIG_SORT)["n"].to_pylist() == [2_000_000]
        with pytest.raises(SQLRefusedError):  # the user cannot move it
            cat.query("SET temp_directory = '/tmp'")
    assert not os.path.exists(folder)
    assert not os.path.exists(tmp_path / ".tmp")


def test_the_default_memory_limit_is_half_of_ram(store):
    # DuckDB prints the limit rounded to 3 digits in its own unit: compare with that rounding.
    with store.catalog() as cat:
        shown = cat.query("SELECT current_setting('memory_limit') AS m")["m"][0].as_py()
    number, unit = shown.split()
    units = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
    assert float(number) * units[unit] == pytest.approx(parse_size("50%"), rel=0.01)


def test_limits_refuse_unknown_keys_and_bad_values_by_name():
    with pytest.raises(ValidationError, match="timeout"):
        SQLLimits(timeout=5)
    with pytest.raises(ValidationError, match="memory_limit '12XB' is not a size"):
        SQLLimits(memory_limit="12XB")
    with pytest.raises(ValidationError, match="timeout_s"):
        SQLLimits(timeout_s=-1)
    with pytest.raises(ValidationError, match="not a share of RAM"):
        SQLLimits(spill="10%")
    assert SQLLimits(timeout_s=0).timeout_s is None
    assert parse_size("1.5KiB") == 1536 and parse_size("2GB") == 2 * 10**9


def test_the_cli_passes_the_memory_limit_and_names_a_bad_one(store):
    r = _l2s("sql", BIG_SORT, "--store", store.url, "--memory-limit", "64MB")
    assert r.exit_code == 1 and "more memory than the catalog's limit" in r.output
    r = _l2s("sql", "SELECT 1", "--store", store.url, "--memory-limit", "lots")
    assert r.exit_code == 1 and "memory_limit 'lots' is not a size" in r.output


# --- rows ---------------------------------------------------------------------------------


def _table_rows(output: str) -> list[str]:
    return re.findall(r"^│\s*(\d+)\s*│$", output, flags=re.M)


def test_the_table_format_caps_rows_and_says_how_many_were_left_out(store):
    q = "SELECT i FROM range(2500) t(i) ORDER BY i"
    r = _l2s("sql", q, "--store", store.url)
    assert r.exit_code == 0, r.output
    assert _table_rows(r.output) == [str(i) for i in range(1000)]
    assert "1500 more row(s) not shown (2500 in all)" in r.output
    r = _l2s("sql", q, "--store", store.url, "--max-rows", "3")
    assert _table_rows(r.output) == ["0", "1", "2"] and "2497 more row(s)" in r.output
    r = _l2s("sql", "SELECT i FROM range(5) t(i)", "--store", store.url)
    assert len(_table_rows(r.output)) == 5 and "not shown" not in r.output


def test_head_counts_every_row_and_keeps_the_columns_of_an_empty_result(store):
    with store.catalog() as cat:
        h = cat.head("SELECT i, i * 2 AS j FROM range(200000) t(i)", 7)
        assert h.table.num_rows == 7 and h.total_rows == 200000 and h.left_out == 199993
        empty = cat.head("SELECT i AS a, 'x' AS b FROM range(3) t(i) WHERE i > 5", 10)
        assert empty.table.column_names == ["a", "b"] and empty.total_rows == 0


def test_csv_json_and_parquet_write_every_row_to_stdout_or_a_file(store, tmp_path):
    q = "SELECT i, 'v' || i AS s FROM range(2500) t(i) ORDER BY i"
    r = _l2s("sql", q, "--store", store.url, "--format", "csv")
    lines = r.output.splitlines()
    assert r.exit_code == 0 and lines[0] == "i,s" and len(lines) == 2501 and lines[-1] == "2499,v2499"
    r = _l2s("sql", q, "--store", store.url, "--format", "json")
    assert json.loads(r.output)[2499] == {"i": 2499, "s": "v2499"} and len(json.loads(r.output)) == 2500
    out = tmp_path / "rows.parquet"
    r = _l2s("sql", q, "--store", store.url, "--format", "parquet", "--output", str(out))
    assert r.exit_code == 0, r.output
    assert pq.read_table(out).column("i").to_pylist() == list(range(2500))
    out_csv = tmp_path / "rows.csv"
    r = _l2s("sql", q, "--store", store.url, "--format", "csv", "--output", str(out_csv))
    assert r.exit_code == 0 and out_csv.read_text().count("\n") == 2501 and r.output == ""
    r = _l2s("sql", q, "--store", store.url, "--format", "parquet")
    assert r.exit_code == 1 and "--output" in r.output


def test_a_failed_query_leaves_no_output_file(store, tmp_path):
    out = tmp_path / "rows.csv"
    r = _l2s("sql", "SELECT CASE WHEN i < 100000 THEN i ELSE ('x' || i)::INT END AS v FROM range(200000) t(i)",
             "--store", store.url, "--format", "csv", "--output", str(out))
    assert r.exit_code == 1 and "x100000" in r.output
    assert os.listdir(tmp_path) == [os.path.basename(store.url)]


def test_an_error_in_the_middle_of_a_stream_is_a_store_error(store):
    with store.catalog() as cat:
        with pytest.raises(StoreError, match="Could not convert"):
            cat.head("SELECT CASE WHEN i < 100000 THEN i ELSE ('x' || i)::INT END AS v FROM range(200000) t(i)", 5)
        assert cat.query("SELECT 2 AS two")["two"].to_pylist() == [2]


# --- verbatim -----------------------------------------------------------------------------

MARKUP = ["[/INST]", "[bold]x[/bold]", "[red]", ":smile:", "[link=http://x]y[/link]"]


def test_values_that_look_like_markup_print_verbatim_in_every_format(store):
    ids = sample_ids(len(MARKUP))
    s, m = tables(ids)
    s = s.set_column(s.schema.get_field_index("query"), "query", [[*MARKUP]])
    store.put("samples", s, memberships=m)
    q = "SELECT query AS \"[b]q[/b]\" FROM samples ORDER BY sample_id"
    r = _l2s("sql", q, "--store", store.url)
    assert r.exit_code == 0, r.output
    for v in [*MARKUP, "[b]q[/b]"]:
        assert v in r.output
    r = _l2s("sql", q, "--store", store.url, "--format", "csv")
    assert r.output.splitlines() == ["[b]q[/b]", *MARKUP]
    r = _l2s("sql", q, "--store", store.url, "--format", "json")
    assert [row["[b]q[/b]"] for row in json.loads(r.output)] == MARKUP


def test_errors_that_quote_markup_print_verbatim(store):
    r = _l2s("sql", "SELECT '[/INST]'::INT", "--store", store.url)
    assert r.exit_code == 1 and "'[/INST]'" in r.output and "Traceback" not in r.output
    r = _l2s("sql", "SELECT * FROM \"[bold]nope[/bold]\"", "--store", store.url)
    assert r.exit_code == 1 and "[bold]nope[/bold]" in r.output


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_file_reads_are_refused_in_every_format(store, fmt):
    r = _l2s("sql", "SELECT * FROM read_text('/etc/hostname')", "--store", store.url, "--format", fmt)
    assert r.exit_code == 1 and "SQL refused" in r.output and "Traceback" not in r.output


def test_store_sql_takes_limits_per_call_and_refuses_unknown_ones_by_name(store):
    with pytest.raises(SQLTimeoutError, match="time limit of 0.5 s"):
        store.sql(RUNAWAY, timeout_s=0.5)
    with pytest.raises(ValidationError, match="timeot_s"):
        store.sql("SELECT 1", timeot_s=5)
    assert store.sql("SELECT 7 AS n", timeout_s=30, memory_limit="1GB")["n"].to_pylist() == [7]


def test_an_output_file_that_cannot_be_written_is_named(store, tmp_path):
    target = tmp_path / "no-such-folder" / "rows.csv"
    r = _l2s("sql", "SELECT 1 AS one", "--store", store.url, "--format", "csv", "--output", str(target))
    assert r.exit_code == 1 and f"cannot write {target}" in r.output and "Traceback" not in r.output
