"""The installed package is what the tree holds: every package listed, the CLI mounted."""

from __future__ import annotations

import tomllib
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_in_the_tree_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "l2s_data").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    found.add("l2s_data.schemas")
    assert found == listed, f"add to / remove from pyproject [tool.setuptools].packages: {found ^ listed}"


def test_schemas_install_as_a_subpackage():
    import l2s_data.schemas as schemas

    assert Path(schemas.__file__).parent == ROOT / "schemas"
    assert schemas.FORMAT_VERSION >= 1


def test_cli_help_lists_the_command_groups():
    from l2s_data.cli import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for group in ("models", "data", "store"):
        assert group in result.output
