"""Configs: presets by name, validation errors naming file and key, merge precedence, DEFAULTS."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddalign.architectures import parse_layers
from ddalign.run.config import DEFAULTS, PRESETS, SCHEMA, load_config, merge, preset_names, save_effective
from ddalign.errors import DdalignError
from ddalign.run.minimise import MinimiseSettings

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"llama2": (32, 11008), "mistral": (32, 14336), "gemma": (28, 24576), "qwen2": (28, 18944)}


def test_every_shipped_preset_loads_and_makes_settings():
    assert set(FAMILIES) | {"organism"} <= set(preset_names())
    for name in preset_names():
        config = load_config(name)
        assert set(config) <= set(SCHEMA)
        settings = MinimiseSettings.from_config(merge(DEFAULTS, config, {}))
        assert settings.granularity == ("layer", "module", "block")
        assert 0 < settings.oracle.get("target_fraction", 1) <= 1


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_presets_fit_their_models(name):
    layers, ffn = FAMILIES[name]
    config = load_config(name)
    chosen = parse_layers(config["search"]["layers"], layers)
    assert chosen and 0 < chosen[0] and chosen[-1] < layers - 1           # middle layers, per DAPA
    assert ffn % config["search"]["block_size"] == 0                      # whole neuron groups
    assert "gate" in config["search"]["scope"]
    text = (PRESETS / f"{name}.toml").read_text()
    assert str(layers) in text and str(ffn) in text                      # the comment says why


def test_repo_configs_symlink_points_at_the_presets():
    link = ROOT / "configs"
    if not link.exists():
        pytest.skip("not a source checkout")
    assert (link / "llama2.toml").resolve() == (PRESETS / "llama2.toml").resolve()


def test_load_by_path_and_json(tmp_path):
    toml = tmp_path / "mine.toml"
    toml.write_text('[search]\nalgorithm = "probdd"\nlayers = [2, 3]\n[oracle]\nmax_ppl_increase = false\n')
    assert load_config(toml) == {"search": {"algorithm": "probdd", "layers": [2, 3]},
                                 "oracle": {"max_ppl_increase": False}}
    settings = MinimiseSettings.from_config(merge(DEFAULTS, load_config(toml), {}))
    assert "max_ppl_increase" not in settings.oracle and settings.algorithm == "probdd"
    js = tmp_path / "mine.json"
    js.write_text(json.dumps({"generation": {"batch_size": 4}}))
    assert load_config(str(js)) == {"generation": {"batch_size": 4}}


@pytest.mark.parametrize("text, expected", [
    ("[search]\nalgoritm = 'ddmin'\n", r"bad.toml: unknown key search.algoritm"),
    ("[serach]\nalgorithm = 'ddmin'\n", r"bad.toml: unknown section \[serach\]"),
    ("[search]\nblock_size = 'big'\n", r"bad.toml: search.block_size = 'big': expected int"),
    ("[search]\nblock_size = 2.5\n", r"search.block_size"),
    ("[search]\nassume_monotone = 1\n", r"search.assume_monotone"),
    ("[generation]\nbatch_size = true\n", r"generation.batch_size"),
    ("[oracle]\nmax_accuracy_drop = true\n", r"oracle.max_accuracy_drop = true"),
    ("[judge]\nmarkers = ['no', 3]\n", r"judge.markers"),
    ("search = 3\n", r"\[search\] must be a table"),
    ("[search\n", r"bad.toml: not valid TOML"),
])
def test_validation_names_file_and_key(tmp_path, text, expected):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(DdalignError, match=expected):
        load_config(bad)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(DdalignError, match="no such file or preset.*llama2"):
        load_config("llama9")


def test_merge_precedence_defaults_file_cli():
    file_config = {"search": {"block_size": 64, "algorithm": "probdd"}, "generation": {"batch_size": 8}}
    overrides = {"search": {"algorithm": "ddmin", "block_size": None, "layers": None},
                 "generation": {"batch_size": None, "device": "cpu"}}
    merged = merge(DEFAULTS, file_config, overrides)
    assert merged["search"]["algorithm"] == "ddmin"                       # CLI beats file
    assert merged["search"]["block_size"] == 64                           # unset CLI leaves the file's
    assert merged["generation"]["batch_size"] == 8
    assert merged["generation"]["device"] == "cpu"
    assert merged["search"]["layers"] == DEFAULTS["search"]["layers"]     # neither: the default
    assert merged["oracle"] == DEFAULTS["oracle"]
    assert file_config["search"]["algorithm"] == "probdd" and DEFAULTS["search"]["algorithm"] == "hierarchical"
    with pytest.raises(DdalignError, match="unknown key search.nope"):
        merge(DEFAULTS, {}, {"search": {"nope": 1}})


def test_defaults_equal_minimise_settings_defaults():
    assert set(DEFAULTS) == set(SCHEMA)
    for section in SCHEMA:
        assert set(DEFAULTS[section]) == set(SCHEMA[section])
    assert MinimiseSettings.from_config(DEFAULTS) == MinimiseSettings()
    assert MinimiseSettings.from_config(merge(DEFAULTS, {}, {})) == MinimiseSettings()


def test_save_effective_is_json_and_leaves_no_temp(tmp_path):
    config = merge(DEFAULTS, load_config("organism"), {})
    path = save_effective(config, tmp_path / "run" / "config.json")
    assert json.loads(path.read_text()) == config
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]
