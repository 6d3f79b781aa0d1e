"""Run configuration: shipped presets (ddalign/configs/*.toml), user TOML files, command-line overrides.

Precedence: defaults < file < command line; an option left unset (None) does not override.
Unknown sections or keys and wrong types are refused with the file and key named.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

from ddalign.errors import DdalignError

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # pragma: no cover
    import tomli as tomllib

PRESETS = Path(__file__).resolve().parent.parent / "configs"

# section -> key -> accepted types (None allowed everywhere: "unset")
SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "search": {"scope": (str,), "layers": (str, int, list), "granularity": (str, list), "block_size": (int,),
               "algorithm": (str,), "assume_monotone": (bool,)},
    "oracle": {"target_dsr": (float, int), "target_fraction": (float, int), "target_confidence": (float, int, bool),
               "max_ppl_increase": (float, int, bool),
               "max_accuracy_drop": (float, int, bool), "max_over_refusal_rise": (float, int, bool),
               "over_refusal_reference": (str,)},
    "judge": {"kind": (str,), "markers": (list,)},
    "generation": {"max_new_tokens": (int,), "eval_max_new_tokens": (int,), "batch_size": (int,),
                   "template": (str,), "device": (str,), "dtype": (str,)},
    "data": {"harmful": (str,), "safe": (str,), "benign": (str,), "eval_harmful": (str,), "eval_safe": (str,),
             "eval_benign": (str,), "column": (str,), "limit": (int,)},
}

# element type of the list-valued keys
_ELEMENTS: dict[tuple[str, str], type] = {("search", "layers"): int, ("search", "granularity"): str,
                                          ("judge", "markers"): str}


def _defaults() -> dict:
    from ddalign.run.minimise import MinimiseSettings

    s = MinimiseSettings()
    return {
        "search": {"scope": None, "layers": s.layers, "granularity": ",".join(s.granularity),
                   "block_size": s.block_size, "algorithm": s.algorithm, "assume_monotone": s.assume_monotone},
        "oracle": {"target_dsr": None, "target_confidence": None, **s.oracle},
        "judge": {"kind": s.judge, "markers": list(s.markers)},
        "generation": {"max_new_tokens": s.max_new_tokens, "eval_max_new_tokens": s.eval_max_new_tokens,
                       "batch_size": s.batch_size, "template": s.template, "device": s.device, "dtype": s.dtype},
        "data": {k: getattr(s, k) for k in SCHEMA["data"]},
    }


DEFAULTS: dict = _defaults()
"""The effective defaults: MinimiseSettings' own, in config form (one source of truth)."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.toml"))


def load_config(name_or_path) -> dict:
    """A shipped preset by bare name (e.g. 'llama2'), or a TOML / JSON file; validated."""
    path = Path(name_or_path)
    if not path.exists() and (PRESETS / f"{name_or_path}.toml").exists():
        path = PRESETS / f"{name_or_path}.toml"
    if not path.exists():
        raise DdalignError(f"config {name_or_path}: no such file or preset (presets: {', '.join(preset_names())})")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DdalignError(f"{path}: not valid TOML/JSON ({exc})") from None
    validate(data, str(path))
    return data


def validate(data: dict, source: str) -> None:
    if not isinstance(data, dict):
        raise DdalignError(f"{source}: expected sections {', '.join(SCHEMA)}")
    for section, values in data.items():
        if section not in SCHEMA:
            raise DdalignError(f"{source}: unknown section [{section}] (expected one of {', '.join(SCHEMA)})")
        if not isinstance(values, dict):
            raise DdalignError(f"{source}: [{section}] must be a table of keys")
        for key, value in values.items():
            if key not in SCHEMA[section]:
                raise DdalignError(f"{source}: unknown key {section}.{key} (expected one of "
                                   f"{', '.join(SCHEMA[section])})")
            types = SCHEMA[section][key]
            if value is not None and not (isinstance(value, types) and not (isinstance(value, bool) and bool not in types)):
                raise DdalignError(f"{source}: {section}.{key} = {value!r}: expected "
                                   f"{' or '.join(t.__name__ for t in types)}")
            if value is True and section == "oracle":
                raise DdalignError(f"{source}: oracle.{key} = true: expected a number, or false to switch the guard off")
            element = _ELEMENTS.get((section, key))
            if isinstance(value, list) and element and not all(isinstance(v, element) and not isinstance(v, bool)
                                                               for v in value):
                raise DdalignError(f"{source}: {section}.{key} = {value!r}: expected a list of {element.__name__}")


def merge(defaults: dict, file_config: dict | None, overrides: dict | None) -> dict:
    """defaults < file < overrides, section by section; None values never override."""
    out = copy.deepcopy(defaults)
    for layer in (file_config or {}, overrides or {}):
        for section, values in layer.items():
            target = out.setdefault(section, {})
            for key, value in (values or {}).items():
                if value is not None:
                    target[key] = copy.deepcopy(value)
    validate(out, "effective config")
    return out


def save_effective(config: dict, path) -> Path:
    """The effective configuration as JSON, written atomically."""
    from ddalign.io.atomic import write_json_atomic

    return write_json_atomic(path, config)
