"""One rule for ``--workers``: 0 runs in this process (and takes no address), N >= 1 on Ray."""

from __future__ import annotations

import pytest

from l2s_data.actors import RayOptions, absolute_path
from l2s_data.errors import ConfigError


def test_zero_workers_run_in_this_process_and_refuse_an_address_naming_the_work():
    assert RayOptions.or_in_process(0) is None
    with pytest.raises(ConfigError, match="with --workers 0 the evaluation runs in this process"):
        RayOptions.or_in_process(0, "auto", what="evaluation")


def test_workers_give_checked_ray_options():
    assert RayOptions.or_in_process(2, "auto", 3, what="extraction") == RayOptions(2, "auto", 3)
    with pytest.raises(ConfigError, match="at least 1 worker"):
        RayOptions.or_in_process(-1)


def test_one_absolute_path_rule_for_actors_and_sweep_trials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "configs"
    assert absolute_path("runs/store") == str(tmp_path / "runs" / "store")
    assert absolute_path("runs/store", base) == str(base / "runs" / "store")
    assert absolute_path(str(tmp_path / "abs"), base) == str(tmp_path / "abs")
    assert absolute_path("s3://bucket/store", base) == "s3://bucket/store" and absolute_path("", base) == ""
