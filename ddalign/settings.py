"""Typed run settings: the one definition of every option of `minimise`, `evaluate` and `demo` (and of
the settings the `refusals` study shares with them).

Each setting is a field of one section model (`[search]`, `[oracle]`, `[judge]`, `[generation]`,
`[data]`) with its type, default and description; the oracle's guard bounds come from the guard
registry (`ddalign.evaluate.guards`). From these alone follow:

- validation of TOML / JSON files and of the command line (a wrong type or an unknown key is one
  `DdalignError` line naming the file and the key);
- the command line: `cli_options(command)` makes one click option per field, default None
  ("from the config"), its help text the field's description;
- the configuration reference `docs/configuration.md` (`python -m ddalign.settings`).

Precedence: the models' defaults < the config file (a preset name or a path) < the command line.
`evaluate` (and `refusals`) measure on the evaluation side of the settings: a field `eval_X` takes the
flag `--X` there, and its search-side twin `X` is not offered.

(Over 500 lines on purpose: the sections, their validation messages and what is generated from
them, flags and reference, stay together so that a setting is defined in one file.)
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ddalign.errors import DdalignError
from ddalign.evaluate import guards as guard_registry
from ddalign.search import ALGORITHMS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS = Path(__file__).resolve().parent / "configs"
LEVELS = ("layer", "module", "block")
COMMANDS = ("minimise", "evaluate", "demo")
RUN = ("minimise", "demo")  # the commands that search
HELD_OUT = ("evaluate", "refusals")  # the commands that measure on the held-out side (eval_X as --X)
STUDY = (*COMMANDS, "refusals")  # fields the refusal study reads too (it generates and judges, never searches)


def setting(
    default: Any = None, description: str = "", *, flag: str | None = None, commands=COMMANDS, factory=None
) -> Any:
    """A field with what the CLI needs: its flag (default `--name-with-dashes`) and its commands."""
    extra = {"flag": flag, "commands": tuple(commands)}
    if factory is not None:
        return Field(default_factory=factory, description=description, json_schema_extra=extra)
    return Field(default, description=description, json_schema_extra=extra)


class Section(BaseModel):
    """A settings table: strict types (no 1 for true, no 2.5 for an integer), no unknown key."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)
    commands: ClassVar[tuple[str, ...]] = STUDY  # the commands offering this section's fields

    @classmethod
    def build(cls, source: str | None = None, **data: Any):
        """The section from keyword values; a bad value is a DdalignError naming the key.
        (No `__init__` override: pydantic would call it for nested sections too.)"""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise DdalignError(error_line(exc, data, source or "settings", section=cls.section_name())) from None

    @classmethod
    def section_name(cls) -> str:
        return next((name for name, model in SECTIONS.items() if issubclass(cls, model)), cls.__name__.lower())


def _positive(name: str, value):
    if value is not None and value < 1:
        raise ValueError(f"expected a positive number, got {value}")
    return value


class Search(Section):
    scope: Optional[str] = setting(
        None, "Scope of the extracted bundle (demo; minimise takes the bundle's).", commands=("demo",)
    )
    layers: Union[str, int, list[int], None] = setting(
        None, "Search only these layers of the bundle, e.g. 8-20 or [8, 9, 10] (default: every layer).", commands=RUN
    )
    granularity: tuple[Literal[LEVELS], ...] = setting(
        LEVELS, "Levels, coarse to fine, each once: e.g. layer,module,block.", commands=RUN
    )
    block_size: Optional[int] = setting(
        None, "Rows per block at the block level (default: 1/8 of a module).", commands=RUN
    )
    algorithm: Literal[ALGORITHMS] = setting(
        "hierarchical",
        "Search algorithm: hierarchical (layer -> module -> row block, ProbDD at each level), probdd or ddmin.",
        commands=RUN,
    )
    assume_monotone: bool = setting(False, "Treat a superset of a passing set as passing (fewer tests).", commands=RUN)
    max_tests: Optional[int] = setting(
        None,
        "Stop after this many oracle tests (a resumed run counts its journal's) and keep the last passing set: "
        "it passes but is not 1-minimal, and the report says so. A resume may raise it (default: no limit).",
        commands=RUN,
    )

    @field_validator("granularity", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            return tuple(g.strip() for g in value.split(",") if g.strip())
        return tuple(value) if isinstance(value, list) else value

    @field_validator("granularity")
    @classmethod
    def _coarse_to_fine(cls, value):
        if not value or list(value) != sorted(set(value), key=LEVELS.index):
            raise ValueError(f"levels go coarse to fine, each once (layer,module,block), got {','.join(value)!r}")
        return value

    @field_validator("block_size", "max_tests")
    @classmethod
    def _rows(cls, value):
        return _positive("", value)


class Oracle(Section):
    """The pass rule. Guard bounds (max_ppl_increase, ...) are the registered guards' keys."""

    model_config = ConfigDict(extra="allow", strict=True)
    commands: ClassVar[tuple[str, ...]] = RUN
    fill_guard_defaults: ClassVar[bool] = True  # a config that does not name a guard gets its default

    target_dsr: Optional[float] = setting(None, "Absolute DSR a candidate must reach (replaces target_fraction).")
    target_fraction: Optional[float] = setting(0.9, "Or: this fraction of the whole bundle's DSR.")
    target_confidence: Optional[float] = setting(
        None,
        "Ask the DSR's one-sided Wilson lower bound at this level (e.g. 0.9) to reach the target, so that "
        "what the search keeps holds on new prompts.",
    )
    over_refusal_reference: Literal["target", "full"] = setting(
        "target", "Count the over-refusal rise from the target's over-refusal or the full bundle's."
    )
    accuracy_reference: Literal["target", "full"] = setting(
        "target",
        "Count the benign accuracy drop from the target's accuracy or the full bundle's (for a bundle "
        "that itself costs accuracy: the search then keeps what the whole patch keeps).",
    )

    @model_validator(mode="before")
    @classmethod
    def _guards(cls, data):
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in list(data):
            if key in cls.model_fields:
                continue
            if guard_registry.by_key(key) is None:
                raise PydanticCustomError("unknown_key", "unknown key", {"key": key})
            try:
                data[key] = guard_registry.check_bound(key, data[key])
            except ValueError as exc:
                raise PydanticCustomError("bad_value", "{why}", {"key": key, "why": str(exc)}) from None
        for guard in guard_registry.registered():
            data.setdefault(guard.key, guard.default if cls.fill_guard_defaults else None)
        return data

    @field_validator("target_dsr", "target_fraction")
    @classmethod
    def _share(cls, value):
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"expected a share in [0, 1], got {value!r}")
        return value

    @field_validator("target_confidence")
    @classmethod
    def _level(cls, value):
        if value is not None and not 0.5 <= value < 1:
            raise ValueError(f"expected a confidence level in [0.5, 1), e.g. 0.9, got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_target(self):
        if self.target_dsr is not None:
            self.target_fraction = None  # an absolute target replaces the fractional one
        if self.target_dsr is None and self.target_fraction is None:
            raise ValueError("set target_dsr (absolute) or target_fraction (of the full transplant's DSR)")
        if self.target_fraction is not None and self.target_fraction <= 0:
            raise ValueError(f"target_fraction: expected a share in (0, 1], got {self.target_fraction}")
        return self

    def bound(self, key: str) -> float | None:
        return (self.model_extra or {}).get(key)


class Judge(Section):
    kind: str = setting("keyword", "'keyword', or a classifier model folder or Hub id.", flag="--judge", commands=STUDY)
    markers: list[str] = setting(
        description="Extra refusal markers (repeatable flag).", flag="--refusal-marker", factory=list, commands=STUDY
    )
    markers_file: Optional[str] = setting(
        None, "Text file of extra refusal markers, one a line.", flag="--refusal-markers", commands=STUDY
    )
    labels: list[str] = setting(
        description="Classifier judge: labels meaning refusal (repeatable flag).",
        flag="--refusal-label",
        factory=list,
        commands=STUDY,
    )
    accuracy_match: Literal["contains", "exact"] = setting(
        "contains", "How a benign answer is scored against its reference."
    )


class Generation(Section):
    max_new_tokens: int = setting(32, "Tokens generated per oracle prompt.", commands=RUN)
    eval_max_new_tokens: int = setting(
        64,
        "Tokens generated per prompt in the held-out evaluation (refusals: per answer, never stopped early, "
        "enough for a first sentence).",
        commands=STUDY,
    )
    batch_size: int = setting(32, "Prompts generated together.", commands=STUDY)
    template: Optional[str] = setting(
        None,
        "Prompt template with {prompt} ('chat' = the tokenizer's chat "
        "template; default: the chat template if any, else an Alpaca-style one).",
        commands=STUDY,
    )
    device: Optional[str] = setting(None, "cpu, cuda, cuda:1 ... (default: CUDA when present).", commands=STUDY)
    dtype: Optional[str] = setting(
        None, "float32, bfloat16, float16 (default: bf16 on GPU, float32 on CPU).", commands=STUDY
    )
    device_map: Optional[str] = setting(
        None, "accelerate device map for a model larger than one GPU (e.g. auto).", commands=("minimise",)
    )
    early_stop: bool = setting(
        True, "Stop a row's generation once the judge has decided (no verdict changes).", commands=("evaluate",)
    )
    max_prompt_tokens: Optional[int] = setting(
        None,
        "Longer prompts keep their last tokens (and BOS); default: the model's context minus the tokens generated.",
        commands=STUDY,
    )

    @field_validator("max_new_tokens", "eval_max_new_tokens", "batch_size", "max_prompt_tokens")
    @classmethod
    def _count(cls, value):
        return _positive("", value)


class Data(Section):
    harmful: str = setting(
        "builtin:harmful-dev",
        "Harmful prompts the search tests on (csv/json/jsonl/parquet/txt "
        "file, hf://datasets/ORG/NAME[/FILE], or builtin:NAME).",
    )
    safe: str = setting(
        "builtin:safe-dev", "Safe-but-scary prompts for the over-refusal guard (file, builtin:NAME, or none)."
    )
    benign: str = setting(
        "builtin:benign-dev",
        "Benign prompts with references for the perplexity / accuracy guards (file, builtin:NAME, or none).",
    )
    eval_harmful: str = setting(
        "builtin:harmful-heldout", "Held-out harmful prompts for the final numbers.", commands=STUDY
    )
    eval_safe: str = setting("builtin:safe-heldout", "Held-out safe-but-scary prompts (file, builtin:NAME, or none).")
    eval_benign: str = setting(
        "builtin:benign-heldout", "Held-out benign prompts with references (file, builtin:NAME, or none)."
    )
    column: Optional[str] = setting(None, "Column / field holding the prompt in the data files.", commands=STUDY)
    limit: Optional[int] = setting(
        None, "Use only N prompts of each search set, evenly spaced over it (sets are often grouped by category)."
    )
    eval_limit: Optional[int] = setting(
        None, "Use only N prompts of each held-out set, evenly spaced over it.", commands=STUDY
    )

    @field_validator("limit", "eval_limit")
    @classmethod
    def _count(cls, value):
        return _positive("", value)


SECTIONS: dict[str, type[Section]] = {
    "search": Search,
    "oracle": Oracle,
    "judge": Judge,
    "generation": Generation,
    "data": Data,
}


class Settings(BaseModel):
    """A run's effective settings, one model per section."""

    model_config = ConfigDict(extra="forbid", strict=True)

    search: Search = Field(default_factory=Search)
    oracle: Oracle = Field(default_factory=Oracle)
    judge: Judge = Field(default_factory=Judge)
    generation: Generation = Field(default_factory=Generation)
    data: Data = Field(default_factory=Data)

    @classmethod
    def from_dict(cls, data: dict | None, source: str = "settings") -> "Settings":
        """Sections as in a config file over the defaults; errors name `source` and the key."""
        data = data or {}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise DdalignError(error_line(exc, data, source)) from None

    @classmethod
    def load(cls, config: "str | Path | None" = None, overrides: dict | None = None) -> "Settings":
        """defaults < `config` (a preset name or a TOML / JSON file) < `overrides` (None: not given)."""
        file = read_config(config) if config is not None else {}
        return cls.from_dict(layered(file, overrides), "command line")

    def to_dict(self) -> dict:
        """JSON-ready sections (the effective config a run records)."""
        return self.model_dump(mode="json")

    def oracle_config(self):
        """The oracle's configuration: the [oracle] rule with the generation settings the tests run with."""
        from ddalign.evaluate.oracle import OracleConfig

        return OracleConfig(
            **self.oracle.model_dump(),
            batch_size=self.generation.batch_size,
            max_new_tokens=self.generation.max_new_tokens,
            template=self.generation.template,
            max_prompt_tokens=self.generation.max_prompt_tokens,
            accuracy_match=self.judge.accuracy_match,
        )

    def generation_config(self, *, held_out: bool = True):
        from ddalign.evaluate.generate import GenerationConfig

        g = self.generation
        return GenerationConfig(
            max_new_tokens=g.eval_max_new_tokens if held_out else g.max_new_tokens,
            batch_size=g.batch_size,
            template=g.template,
            device=g.device,
            dtype=g.dtype,
            max_prompt_tokens=g.max_prompt_tokens,
        )

    def make_judge(self, *, allow_pickle: bool = False):
        from ddalign.evaluate.judges import make_judge

        j = self.judge
        return make_judge(
            j.kind,
            markers=tuple(j.markers),
            markers_file=j.markers_file,
            refusal_labels=tuple(j.labels) or None,
            device=self.generation.device,
            dtype=self.generation.dtype,
            allow_pickle=allow_pickle,
        )


def as_settings(config: "Settings | dict | None") -> Settings:
    """A `Settings`, or sections as a dict over the defaults (the library's `config=` arguments)."""
    return config if isinstance(config, Settings) else Settings.from_dict(config)


# --- files and layering ---------------------------------------------------------------------------


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.toml"))


def read_config(name_or_path) -> dict:
    """A shipped preset by bare name (e.g. 'llama2'), or a TOML / JSON file; validated, as given."""
    path = Path(name_or_path)
    if not path.exists() and (PRESETS / f"{name_or_path}.toml").exists():
        path = PRESETS / f"{name_or_path}.toml"
    if not path.exists():
        raise DdalignError(f"config {name_or_path}: no such file or preset (presets: {', '.join(preset_names())})")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DdalignError(f"{path}: not valid TOML/JSON ({str(exc).splitlines()[0]})") from None
    Settings.from_dict(data, str(path))
    return data


def layered(*layers: dict | None) -> dict:
    """Section dicts merged left to right; a None value never overrides."""
    out: dict = {}
    for layer in layers:
        for section, values in (layer or {}).items():
            if not isinstance(values, dict):
                out[section] = values
                continue
            target = out.setdefault(section, {})
            for key, value in values.items():
                if value is not None:
                    target[key] = copy.deepcopy(value)
    return out


def error_line(exc: ValidationError, data: Any, source: str, section: str | None = None) -> str:
    """The first validation error as one line: the source, the key, the value and what was expected."""
    err = exc.errors()[0]
    loc = [str(x) for x in err["loc"]]
    if section is not None:
        loc = [section, *loc]
    ctx = err.get("ctx") or {}
    if err["type"] == "unknown_key":
        loc = [*loc, ctx["key"]]
    if err["type"] == "extra_forbidden" and len(loc) == 1:
        return f"{source}: unknown section [{loc[0]}] (expected one of {', '.join(SECTIONS)})"
    if err["type"] in ("extra_forbidden", "unknown_key"):
        known = [s.name for s in specs() if s.section == loc[0]]
        return f"{source}: unknown key {loc[0]}.{loc[1]} (expected one of {', '.join(known)})"
    if err["type"] in ("model_type", "model_attributes_type", "dict_type") and len(loc) == 1:
        return f"{source}: [{loc[0]}] must be a table of keys"
    if err["type"] == "bad_value":
        loc = [*loc, ctx["key"]]
    key = ".".join(loc[:2])
    given = data if section is None else {section: data}
    value = given
    for part in loc[:2]:
        value = value.get(part) if isinstance(value, dict) else None
    spec = next((s for s in specs() if f"{s.section}.{s.name}" == key), None)
    if err["type"] in ("value_error", "bad_value", "assertion_error"):
        why = str(ctx.get("why") or ctx.get("error") or err["msg"]).removeprefix("Value error, ")
    else:
        why = f"expected {spec.expects}" if spec else err["msg"]
    shown = f" = {_toml(value)}" if len(loc) >= 2 else ""
    return f"{source}: {key}{shown}: {why}"


def _toml(value) -> str:
    return "true" if value is True else "false" if value is False else repr(value)


# --- the fields, for the CLI, the reference and the tests -----------------------------------------


@dataclass(frozen=True)
class Spec:
    """One setting: where it lives, its type and default, its help, its flag and its commands."""

    section: str
    name: str
    annotation: Any
    default: Any
    description: str
    flag: str
    commands: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def dest(self) -> str:
        """The click parameter name."""
        return f"{self.section}__{self.name}"

    @property
    def choices(self) -> tuple | None:
        core = _core(self.annotation)
        if get_origin(core) is Literal:
            return get_args(core)
        return None

    @property
    def base(self) -> type:
        """The Python type a flag parses to (str for the free-form fields)."""
        core = _core(self.annotation)
        if core in (bool, int, float):
            return core
        return str

    @property
    def multiple(self) -> bool:
        return get_origin(_core(self.annotation)) is list and self.name != "layers"

    @property
    def expects(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.is_guard:
            return "a non-negative number, or false (off)"
        names = {bool: "true or false", int: "int", float: "a number", str: "a string"}
        if self.name == "layers":
            return "a layer range such as '8-20', or a list of int"
        if self.name == "granularity":
            return "levels such as 'layer,module,block', or a list of them"
        if self.multiple:
            return "a list of str"
        return names.get(self.base, str(self.annotation))

    @property
    def is_guard(self) -> bool:
        return self.section == "oracle" and guard_registry.by_key(self.name) is not None

    def flag_for(self, command: str) -> str:
        if command in HELD_OUT and self.name.startswith("eval_"):
            return "--" + self.name.removeprefix("eval_").replace("_", "-")
        return self.flag


def _core(annotation):
    """X of Optional[X]; a union of several types stays itself."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, getattr(__import__("types"), "UnionType", Union)) and len(args) == 1:
        return args[0]
    if get_origin(annotation) is tuple:
        return str
    return annotation


def specs() -> list[Spec]:
    """Every setting, section by section (the oracle's guard bounds from the guard registry)."""
    out = []
    for section, model in SECTIONS.items():
        for name, info in model.model_fields.items():
            extra = info.json_schema_extra or {}
            default = info.default_factory() if info.default_factory else info.default
            commands = tuple(c for c in extra.get("commands", COMMANDS) if c in model.commands)
            out.append(
                Spec(
                    section,
                    name,
                    info.annotation,
                    default,
                    info.description or "",
                    extra.get("flag") or "--" + name.replace("_", "-"),
                    commands,
                )
            )
        if model is Oracle:
            out += [
                Spec("oracle", g.key, Optional[float], g.default, g.description, "--" + g.key.replace("_", "-"), RUN)
                for g in guard_registry.registered()
            ]
    return out


def command_specs(command: str) -> list[Spec]:
    """The settings a command offers as flags (evaluate, refusals: the eval_ twin stands for its search-side field)."""
    names = {s.key for s in specs()}
    return [
        s
        for s in specs()
        if command in s.commands and not (command in HELD_OUT and f"{s.section}.eval_{s.name}" in names)
    ]


def cli_options(command: str):
    """A decorator adding one click option per setting of `command` (default None: from the config)."""
    import click

    class _GuardBound(click.ParamType):
        name = "NUMBER|off"

        def convert(self, value, param, ctx):
            if isinstance(value, str) and value.lower() in ("off", "false"):
                return False  # layered over the file's bound: the guard is off
            return click.FLOAT.convert(value, param, ctx)

    def decorate(f):
        for spec in reversed(command_specs(command)):
            flag = spec.flag_for(command)
            shown = ",".join(spec.default) if isinstance(spec.default, tuple) else spec.default
            help_text = f"{spec.description} [{spec.key}; default: {'none' if shown in (None, []) else shown}]"
            if spec.base is bool:
                name = flag.removeprefix("--")
                f = click.option(f"--{name}/--no-{name}", spec.dest, default=None, help=help_text)(f)
                continue
            if spec.is_guard:
                kind = _GuardBound()
            elif spec.choices:
                kind = click.Choice(spec.choices)
            else:
                kind = {int: click.INT, float: click.FLOAT}.get(spec.base, click.STRING)
            f = click.option(flag, spec.dest, type=kind, default=None, multiple=spec.multiple, help=help_text)(f)
        return f

    return decorate


def cli_overrides(options: dict) -> dict:
    """The settings given on the command line (click's values of `cli_options`), as section dicts.
    Pops them from `options`; an option not given (None, or an empty repeatable) is left out."""
    out: dict = {}
    for dest in [k for k in options if "__" in k]:
        value = options.pop(dest)
        section, name = dest.split("__", 1)
        if value is None or value == ():
            continue
        out.setdefault(section, {})[name] = list(value) if isinstance(value, tuple) else value
    return out


# --- the configuration reference ------------------------------------------------------------------


def reference_markdown() -> str:
    """docs/configuration.md: every setting with its type, default, flags and meaning."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `ddalign/settings.py` by `python -m ddalign.settings` (do not edit by hand).",
        "",
        "`ddalign minimise`, `ddalign evaluate` and `ddalign demo` read the same settings (`ddalign refusals` "
        "its judge, generation and harmful-set ones): the defaults below, "
        "then a config file (`--config NAME` for a shipped preset in `ddalign/configs/`, or a TOML / JSON "
        "path), then the command line. A TOML file has one table per section; `false` switches a guard "
        "off. `evaluate` and `refusals` measure on the held-out side: there `--harmful` sets `data.eval_harmful`, "
        "`--max-new-tokens` sets `generation.eval_max_new_tokens`, and so on.",
        "",
        "Presets: " + ", ".join(f"`{n}`" for n in preset_names()) + ".",
        "",
    ]
    for section, model in SECTIONS.items():
        lines += [f"## [{section}]", ""]
        if model.__doc__ and section == "oracle":
            lines += [" ".join(model.__doc__.split()), ""]
        lines += ["| key | type | default | flag (commands) | meaning |", "|---|---|---|---|---|"]
        for spec in (s for s in specs() if s.section == section):
            default = ",".join(spec.default) if isinstance(spec.default, tuple) else spec.default
            flags = sorted({spec.flag_for(c) for c in spec.commands})
            text = spec.description.replace("|", "\\|")
            lines.append(
                f"| `{spec.name}` | {spec.expects} | `{json.dumps(default)}` | "
                f"{', '.join(f'`{f}`' for f in flags)} ({', '.join(spec.commands)}) | {text} |"
            )
        lines.append("")
    return "\n".join(lines)


README_BEGIN = "<!-- settings: generated by `python -m ddalign.settings --readme`; do not edit -->"
README_END = "<!-- settings: end -->"


def reference_summary() -> str:
    """The README's short reference: every key of every section with its default and flag."""
    lines = [README_BEGIN, "", "| section | key = default (flag) |", "|---|---|"]
    for section in SECTIONS:
        cells = []
        for spec in (s for s in specs() if s.section == section):
            default = ",".join(spec.default) if isinstance(spec.default, tuple) else spec.default
            cells.append(f"`{spec.name} = {json.dumps(default)}` ({spec.flag})")
        lines.append(f"| `[{section}]` | " + "; ".join(cells) + " |")
    return "\n".join(lines + ["", README_END])


if __name__ == "__main__":
    import sys

    print(
        reference_summary() if "--readme" in sys.argv[1:] else reference_markdown(),
        end="\n" if "--readme" in sys.argv[1:] else "",
    )
