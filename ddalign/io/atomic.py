"""Atomic writes: a temporary file beside the target, fsync, rename; nothing half-written is ever seen."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

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


@contextlib.contextmanager
def atomic_folder(out) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; when the block succeeds its files are synced and the
    folder is renamed to `out` (an existing `out` is moved aside first, then removed). On error the
    temporary folder is removed and `out` is untouched."""
    from ddalign.io.checkpoint import _fsync_dir, _fsync_file
    from ddalign.io.outputs import umask

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    mask = umask()
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp's 0700 would outlive the rename
    try:
        yield tmp
        for item in tmp.iterdir():
            if item.is_file():
                os.chmod(item, 0o666 & ~mask)  # some writers create their files 0600
                _fsync_file(item)
        _fsync_dir(tmp)
        if out.exists():
            backup = out.with_name(f".{out.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(out, backup)
            os.replace(tmp, out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
