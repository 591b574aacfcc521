"""The extraction config: validated, unknown keys refused by name, layer specs parsed."""

from __future__ import annotations

from pathlib import Path

import pytest

from l2s_data.errors import ConfigError
from l2s_data.extract.config import load_config, parse_config, parse_layers

CONFIGS = Path(__file__).resolve().parents[2] / "l2s_data" / "extract" / "configs"

MINIMAL = {"model": {"path": "m"}, "data": {"path": "d"}, "run": {"store": "s"}}


def _with(section: str, **kv):
    cfg = {k: dict(v) for k, v in MINIMAL.items()}
    cfg.setdefault(section, {}).update(kv)
    return cfg


def test_minimal_config_gets_the_documented_defaults():
    cfg = parse_config(MINIMAL)
    assert cfg.recipe.views == ["input", "pos", "neg", "p2s"]
    assert cfg.recipe.layers == "all" and cfg.recipe.store_dtype == "float16"
    assert cfg.run.batch_size == 8 and cfg.run.shard_size == 64 and cfg.run.prefix_sharing


@pytest.mark.parametrize("section,key", [("recipe", "layer"), ("run", "batchsize"), ("model", "dtpye")])
def test_an_unknown_key_is_refused_and_named(section, key):
    with pytest.raises(ConfigError, match=rf"unknown key '{section}\.{key}'"):
        parse_config(_with(section, **{key: 1}))


def test_an_unknown_top_level_section_is_refused_and_named(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[model]\npath = "m"\n[data]\npath = "d"\n[run]\nstore = "s"\n[extras]\nx = 1\n')
    with pytest.raises(ConfigError, match=r"unknown key 'extras'") as err:
        load_config(p)
    assert str(p) in str(err.value)


def test_a_missing_required_key_is_named():
    with pytest.raises(ConfigError, match=r"missing key 'run'"):
        parse_config({"model": {"path": "m"}, "data": {"path": "d"}})


def test_bad_values_are_refused_with_the_value():
    with pytest.raises(ConfigError, match="recipe.store_dtype"):
        parse_config(_with("recipe", store_dtype="int8"))
    with pytest.raises(ConfigError, match="run.batch_size"):
        parse_config(_with("run", batch_size=0))
    with pytest.raises(ConfigError, match="recipe.views"):
        parse_config(_with("recipe", views=["input", "input"]))
    with pytest.raises(ConfigError, match="recipe.layers"):
        parse_config(_with("recipe", layers="ten"))


def test_a_missing_or_broken_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_layer_specs_cover_all_ranges_and_lists():
    assert parse_layers("all", num_layers=4) == (0, 1, 2, 3)
    assert parse_layers("1:3", num_layers=4) == (1, 2)
    assert parse_layers("0:8:2", num_layers=8) == (0, 2, 4, 6)
    assert parse_layers("2:", num_layers=4) == (2, 3)
    assert parse_layers([3, 1, 1], num_layers=4) == (1, 3)


def test_a_layer_beyond_the_model_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"layer\(s\) \[4\].*4 decoder layers"):
        parse_layers([1, 4], num_layers=4)
    with pytest.raises(ConfigError, match="empty or negative"):
        parse_layers("3:1", num_layers=4)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_example_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.model.path and cfg.data.path and cfg.run.store
