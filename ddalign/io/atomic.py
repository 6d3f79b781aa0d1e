"""Atomic writes: a temporary file beside the target, fsync, rename; nothing half-written is ever seen."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ddalign.errors import DdalignError


def write_json_atomic(path, data: Any) -> Path:
    target = Path(path)
    if target.is_dir():
        raise DdalignError(f"{target}: is a folder; expected a JSON file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False, allow_nan=False)
            fh.write("\n")
            fh.flush()
            from ddalign.io.outputs import umask

            os.fchmod(fh.fileno(), 0o666 & ~umask())  # mkstemp made it 0600
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
