"""Write a trained model as an ordinary checkpoint folder, atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from ddalign.errors import DdalignError
from ddalign.io.atomic import atomic_folder
from ddalign.io.outputs import record_written


def save_model(
    model,
    tokenizer,
    out,
    *,
    record: dict | None = None,
    record_name: str = "training.json",
    files: Mapping[str, str] | None = None,
) -> Path:
    """safetensors weights, config, generation config, tokenizer (with its chat template) and,
    when given, the training record and other text `files` (name -> content); the folder appears
    whole or not at all. The caller checks that `out` may be replaced (ddalign.io.outputs)."""
    out = Path(out)
    extra = dict(files or {})
    for name in [record_name, *extra] if record is not None else extra:
        if Path(name).name != name or name.endswith(".safetensors") or name == "config.json":
            raise DdalignError(f"save_model: {name!r} cannot be written beside the weights (a plain file name)")
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if record is not None:
            (tmp / record_name).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for name, text in extra.items():
            (tmp / name).write_text(text, encoding="utf-8")
        record_written(tmp, [p.name for p in tmp.iterdir()])
    return out
