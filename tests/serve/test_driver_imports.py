"""The driver side of serving (`l2s serve`, a submitted serve job, `serve run`) builds and deploys
the application without loading the model libraries: only a replica needs them."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import l2s_data

ROOT = Path(l2s_data.__file__).parent
DRIVER = ("l2s_data.serve.service", "l2s_data.serve.app")


def _module_level_imports(module: str) -> set[str]:
    """Modules that importing ``module`` imports by its own top-level statements (not in a
    function, not under ``if TYPE_CHECKING``), its packages' ``__init__`` included."""
    rel = module.split(".")[1:]
    path = ROOT.joinpath(*rel).with_suffix(".py")
    if not path.exists():
        path = ROOT.joinpath(*rel, "__init__.py")
    if not path.exists():  # a subpackage installed from elsewhere (l2s_data.schemas is schemas/)
        path = Path(importlib.util.find_spec(module).origin)
    out = {".".join(module.split(".")[:k]) for k in range(1, module.count(".") + 1)}  # parent packages
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names
                    if (ROOT.parent / node.module.replace(".", "/") / f"{a.name}.py").exists()}
        elif isinstance(node, ast.Try):
            for sub in node.body:
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    out |= {a.name for a in sub.names} if isinstance(sub, ast.Import) else {sub.module}
    return out


def _closure(roots) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        if m == "l2s_data" or m.startswith("l2s_data."):
            todo += [n for n in _module_level_imports(m) if n not in seen]
    return seen


def test_deploying_an_application_imports_no_model_library():
    reached = _closure(DRIVER)
    assert {"l2s_data.serve.app", "l2s_data.serve.config", "fastapi", "ray"} <= reached  # the walk follows the imports
    heavy = sorted(m for m in reached if m.split(".")[0] == "transformers" or m.startswith("l2s_data.serve.engine"))
    assert not heavy, f"the serving driver imports {heavy} at module level; import them where a replica needs them"
