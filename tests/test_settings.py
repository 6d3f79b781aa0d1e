"""Typed settings: presets by name, validation errors naming file and key, precedence
(defaults < file < command line), one default per field, every field reachable from TOML and from
a flag, and the configuration reference generated from the models."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from ddalign.architectures import parse_layers
from ddalign.cli import cli
from ddalign.errors import DdalignError
from ddalign.settings import (
    PRESETS,
    SECTIONS,
    Settings,
    cli_overrides,
    command_specs,
    preset_names,
    read_config,
    reference_markdown,
    specs,
)

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"llama2": (32, 11008), "mistral": (32, 14336), "gemma": (28, 24576), "qwen2": (28, 18944)}


def test_every_shipped_preset_loads_and_makes_settings():
    assert set(FAMILIES) | {"organism"} <= set(preset_names())
    for name in preset_names():
        assert set(read_config(name)) <= set(SECTIONS)
        settings = Settings.load(name)
        assert settings.search.granularity == ("layer", "module", "block")
        assert 0 < (settings.oracle.target_fraction or 1) <= 1


def test_the_organism_preset_as_the_run_reads_it():
    s = Settings.load("organism")
    assert (s.search.scope, s.search.block_size, s.data.limit, s.generation.max_new_tokens) == ("all", 64, 96, 8)
    config = s.oracle_config()
    assert (config.target_fraction, config.target_confidence, config.over_refusal_reference) == (0.9, 0.9, "full")
    assert (config.max_ppl_increase, config.max_accuracy_drop, config.max_over_refusal_rise) == (0.06, 0.1, 0.02)
    assert (config.batch_size, config.max_new_tokens) == (64, 8)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_presets_fit_their_models(name):
    layers, ffn = FAMILIES[name]
    config = read_config(name)
    chosen = parse_layers(config["search"]["layers"], layers)
    assert chosen and 0 < chosen[0] and chosen[-1] < layers - 1  # middle layers, per DAPA
    assert ffn % config["search"]["block_size"] == 0  # whole neuron groups
    assert "gate" in config["search"]["scope"]
    text = (PRESETS / f"{name}.toml").read_text()
    assert str(layers) in text and str(ffn) in text  # the comment says why


def test_repo_configs_symlink_points_at_the_presets():
    link = ROOT / "configs"
    if not link.exists():
        pytest.skip("not a source checkout")
    assert (link / "llama2.toml").resolve() == (PRESETS / "llama2.toml").resolve()


def test_load_by_path_and_json(tmp_path):
    toml = tmp_path / "mine.toml"
    toml.write_text('[search]\nalgorithm = "probdd"\nlayers = [2, 3]\n[oracle]\nmax_ppl_increase = false\n')
    assert read_config(toml) == {
        "search": {"algorithm": "probdd", "layers": [2, 3]},
        "oracle": {"max_ppl_increase": False},
    }
    settings = Settings.load(toml)
    assert settings.oracle.bound("max_ppl_increase") is None and settings.search.algorithm == "probdd"
    assert "perplexity" not in settings.oracle_config().guards
    js = tmp_path / "mine.json"
    js.write_text(json.dumps({"generation": {"batch_size": 4}}))
    assert Settings.load(str(js)).generation.batch_size == 4


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[search]\nalgoritm = 'ddmin'\n", r"bad.toml: unknown key search.algoritm \(expected one of scope, "),
        ("[serach]\nalgorithm = 'ddmin'\n", r"bad.toml: unknown section \[serach\]"),
        ("[oracle]\nmax_ppl_increse = 0.1\n", r"bad.toml: unknown key oracle.max_ppl_increse"),
        ("[search]\nblock_size = 'big'\n", r"bad.toml: search.block_size = 'big': expected int"),
        ("[search]\nblock_size = 2.5\n", r"search.block_size = 2.5: expected int"),
        ("[search]\nblock_size = 0\n", r"search.block_size = 0: expected a positive number"),
        ("[search]\nassume_monotone = 1\n", r"search.assume_monotone = 1: expected true or false"),
        (
            "[search]\nalgorithm = 'bisect'\n",
            r"search.algorithm = 'bisect': expected one of hierarchical, probdd, ddmin",
        ),
        ("[generation]\nbatch_size = true\n", r"generation.batch_size = true"),
        ("[oracle]\nmax_accuracy_drop = true\n", r"oracle.max_accuracy_drop = true: expected a number, or false"),
        ("[oracle]\nmax_accuracy_drop = -1\n", r"oracle.max_accuracy_drop = -1: expected a non-negative number"),
        ("[oracle]\ntarget_dsr = 1.5\n", r"oracle.target_dsr = 1.5: expected a share"),
        ("[judge]\nmarkers = ['no', 3]\n", r"judge.markers = \['no', 3\]: expected a list of str"),
        ("search = 3\n", r"\[search\] must be a table"),
        ("[search\n", r"bad.toml: not valid TOML"),
    ],
)
def test_validation_is_one_line_naming_file_and_key(tmp_path, text, expected):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(DdalignError, match=expected) as err:
        read_config(bad)
    assert "\n" not in str(err.value)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(DdalignError, match="no such file or preset.*llama2"):
        Settings.load("llama9")


def test_precedence_defaults_file_command_line(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text('[search]\nblock_size = 64\nalgorithm = "probdd"\n[generation]\nbatch_size = 8\n')
    s = Settings.load(file, {"search": {"algorithm": "ddmin", "block_size": None}, "generation": {"device": "cpu"}})
    assert s.search.algorithm == "ddmin"  # the command line beats the file
    assert s.search.block_size == 64  # a flag not given leaves the file's
    assert s.generation.batch_size == 8 and s.generation.device == "cpu"
    assert s.search.layers is None and s.oracle == Settings().oracle  # neither: the default
    # an absolute target on the command line replaces the file's fraction; "off" switches a guard off
    s = Settings.load("organism", {"oracle": {"target_dsr": 0.7, "max_ppl_increase": False}})
    assert s.oracle.target_fraction is None and s.oracle_config().guards == ["over_refusal", "benign_accuracy"]
    with pytest.raises(DdalignError, match="command line: unknown key search.nope"):
        Settings.load(None, {"search": {"nope": 1}})


# --- one definition ------------------------------------------------------------------------------


def _commands() -> dict[str, click.Command]:
    return {name: cli.commands[name] for name in ("minimise", "evaluate", "demo", "refusals")}


def test_every_setting_has_one_default_in_its_model():
    keys = [s.key for s in specs()]
    assert len(keys) == len(set(keys))
    names = [s.name for s in specs()]
    assert len(names) == len(set(names)), "a flag is named after its field: names must be unique"
    for model in SECTIONS.values():
        for name, info in model.model_fields.items():
            assert not info.is_required(), f"{model.__name__}.{name} has no default"
    # no command line option carries a default of its own: None means "from the config"
    for command_name, command in _commands().items():
        generated = [p for p in command.params if "__" in (p.name or "")]
        assert {p.name for p in generated} == {s.dest for s in command_specs(command_name)}
        for param in generated:
            assert param.default is None and not param.show_default, (command_name, param.name)
    # so a command line that names no setting overrides nothing (the file's values stand)
    fixed = {
        "minimise": [__file__, "--target", "t", "-o", "p.safetensors"],
        "evaluate": ["model"],
        "demo": [],
        "refusals": ["model"],
    }
    for command_name, command in _commands().items():
        assert cli_overrides(dict(command.make_context(command_name, fixed[command_name]).params)) == {}
    # the oracle's runtime config reuses the generation and judge defaults, never restates them
    from ddalign.evaluate.oracle import OracleConfig
    from ddalign.settings import Generation, Judge

    config = OracleConfig()
    assert config.batch_size == Generation().batch_size and config.max_new_tokens == Generation().max_new_tokens
    assert config.accuracy_match == Judge().accuracy_match
    assert OracleConfig.model_fields["target_fraction"] is not None and "target_fraction" not in vars(OracleConfig)
    assert Settings().oracle_config() == OracleConfig(**Settings().oracle.model_dump())
    # the old tables are gone
    with pytest.raises(ImportError):
        import ddalign.run.config  # noqa: F401


def _other_value(spec):
    """A valid value different from the default: (TOML value, command-line arguments, expected)."""
    if spec.name == "granularity":
        return ["module", "block"], [spec.flag, "module,block"], ("module", "block")
    if spec.name == "layers":
        return "2-3", [spec.flag, "2-3"], "2-3"
    if spec.choices:
        value = next(c for c in spec.choices if c != spec.default)
        return value, [spec.flag, value], value
    if spec.base is bool:
        name = spec.flag.removeprefix("--")
        return (not spec.default), [f"--{name}" if not spec.default else f"--no-{name}"], not spec.default
    if spec.multiple:
        return ["m1", "m2"], [spec.flag, "m1", spec.flag, "m2"], ["m1", "m2"]
    if spec.base is int:
        return 7, [spec.flag, "7"], 7
    if spec.base is float:
        value = 0.85 if spec.default != 0.85 else 0.8
        return value, [spec.flag, str(value)], value
    return "x-test", [spec.flag, "x-test"], "x-test"


def _read(settings: Settings, spec):
    section = getattr(settings, spec.section)
    return section.bound(spec.name) if spec.is_guard else getattr(section, spec.name)


@pytest.mark.parametrize("spec", specs(), ids=lambda s: s.key)
def test_every_setting_is_reachable_from_toml_and_from_a_flag(spec, tmp_path):
    from ddalign.settings import tomllib

    toml_value, argv, expected = _other_value(spec)
    assert _read(Settings(), spec) != expected
    file = tmp_path / "one.toml"
    file.write_text(f"[{spec.section}]\n{spec.name} = {json.dumps(toml_value)}\n")
    assert tomllib.loads(file.read_text()) == {spec.section: {spec.name: toml_value}}
    assert _read(Settings.load(file), spec) == expected
    # from a flag: parsed by the first command that offers it, through the same layering
    bundle = tmp_path / "b.safetensors"
    bundle.write_bytes(b"")
    command_name = spec.commands[0]
    command = _commands()[command_name]
    fixed = {"minimise": [str(bundle), "--target", "t", "-o", "p.safetensors"], "evaluate": ["model"], "demo": []}
    args = [spec.flag_for(command_name) if a == spec.flag else a for a in argv]
    ctx = command.make_context(command_name, fixed[command_name] + args)
    assert _read(Settings.load(None, cli_overrides(dict(ctx.params))), spec) == expected


def test_evaluate_offers_the_held_out_side():
    flags = {s.flag_for("evaluate"): s.key for s in command_specs("evaluate")}
    assert flags["--harmful"] == "data.eval_harmful" and flags["--safe"] == "data.eval_safe"
    assert flags["--limit"] == "data.eval_limit" and flags["--max-new-tokens"] == "generation.eval_max_new_tokens"
    assert not any(k.startswith(("search.", "oracle.")) for k in flags.values())
    assert Settings().data.eval_safe == "builtin:safe-heldout"  # no training prompt in the default sets


def test_refusals_offers_the_held_out_side_without_the_other_sets():
    flags = {s.flag_for("refusals"): s.key for s in command_specs("refusals")}
    assert flags["--harmful"] == "data.eval_harmful" and flags["--limit"] == "data.eval_limit"
    assert flags["--max-new-tokens"] == "generation.eval_max_new_tokens" and "--refusal-marker" in flags
    assert not {"--safe", "--benign", "--early-stop", "--accuracy-match", "--eval-harmful"} & set(flags)
    assert not any(k.startswith(("search.", "oracle.")) for k in flags.values())


def test_guard_off_from_the_command_line():
    ctx = cli.commands["minimise"].make_context(
        "minimise", [__file__, "--target", "t", "-o", "p.safetensors", "--max-ppl-increase", "off"]
    )
    settings = Settings.load("organism", cli_overrides(dict(ctx.params)))
    assert settings.oracle.bound("max_ppl_increase") is None and "perplexity" not in settings.oracle_config().guards


def test_configuration_reference_is_generated_and_committed():
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == reference_markdown(), "run: python -m ddalign.settings > docs/configuration.md"
    for spec in specs():
        assert f"`{spec.name}`" in committed and spec.description.split("(")[0].strip()[:30] in committed


def test_the_readme_reference_is_the_generated_one():
    from ddalign.settings import README_BEGIN, README_END, reference_summary

    readme = (ROOT / "README.md").read_text()
    assert README_BEGIN in readme and README_END in readme
    block = readme[readme.index(README_BEGIN) : readme.index(README_END) + len(README_END)]
    assert block == reference_summary(), "run: python -m ddalign.settings --readme, and paste it into README.md"
