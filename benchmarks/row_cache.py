"""Finished benchmark rows kept in one JSON file, so that an interrupted bench continues."""

from __future__ import annotations

import json
from pathlib import Path

from ddalign.io.atomic import write_json_atomic


class Cache:
    """`get(key, compute)`: the stored row, or `compute()` stored (as JSON) and returned."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str, compute):
        if key not in self.data:
            self.data[key] = json.loads(json.dumps(compute(), default=str))
            write_json_atomic(self.path, self.data)
        return self.data[key]
