"""Where built models are cached, and the digests their cache keys are made of."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """$DDALIGN_CACHE, else $XDG_CACHE_HOME/ddalign, else ~/.cache/ddalign."""
    if os.environ.get("DDALIGN_CACHE"):
        return Path(os.environ["DDALIGN_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "ddalign"
    return Path.home() / ".cache" / "ddalign"


def package_data_digest() -> str:
    """sha256 over the package's own sets and task generator: a built model depends on them."""
    from ddalign.evaluate.datasets import DATA

    digest = hashlib.sha256()
    for name in ("harmful.jsonl", "safe.jsonl", "benign.jsonl", "refusals.txt", "tasks.py"):
        digest.update((DATA / name).read_bytes())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of one file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
