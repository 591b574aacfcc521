"""Typed edges: evaluation, extraction and prefix sharing name what they take of a model and a
store (a Protocol or the concrete class), never ``Any``; the real classes have every member."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import l2s_data
from l2s_data.evaluate.protocols import EvalModel, EvalStore
from l2s_data.models.prefix import PrefixModel
from l2s_data.store import Store

ROOT = Path(l2s_data.__file__).parent


def _members(proto: type) -> set[str]:
    return set(proto.__annotations__) | {m for m, v in vars(proto).items() if callable(v) and not m.startswith("_")}


@pytest.mark.parametrize("proto", [EvalModel, PrefixModel])
def test_the_model_adapter_has_every_member_of_what_evaluation_and_prefix_sharing_take(proto, tiny_adapter):
    adapter = tiny_adapter("llava")
    missing = sorted(m for m in _members(proto) if not hasattr(adapter, m))
    assert not missing, f"ModelAdapter lacks {missing} of {proto.__name__}"


def test_the_store_has_every_member_of_what_evaluation_takes(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    missing = sorted(m for m in _members(EvalStore) if not hasattr(store, m))
    assert not missing, f"Store lacks {missing} of EvalStore"


def test_no_model_or_store_parameter_is_typed_any_in_extraction_evaluation_or_prefix_sharing():
    files = [*sorted((ROOT / "extract").glob("*.py")), *sorted((ROOT / "evaluate").glob("*.py")),
             ROOT / "models" / "prefix.py"]
    loose = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                for a in args:
                    if a.arg in ("adapter", "store") and (a.annotation is None or ast.unparse(a.annotation) == "Any"):
                        if path.name == "results.py":  # rewritten by the results change; it leaves this list with it
                            continue
                        loose.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({a.arg})")
    assert not loose, loose
