"""Fixtures of the steering tests: a store with a planted map (see planted.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def load_planted():
    """tests/steer/planted.py as a module (test folders are not packages here)."""
    name = "l2s_tests_planted"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("planted.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.fixture(scope="session")
def planted_mod():
    return load_planted()


@pytest.fixture(scope="session")
def planted(tmp_path_factory, planted_mod):
    return planted_mod.build(tmp_path_factory.mktemp("planted") / "store")
