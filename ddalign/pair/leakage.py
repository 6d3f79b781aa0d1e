"""Training prompts equal or nearly equal to a public evaluation prompt are left out, so that the
pair's results on public sets measure generalisation, not recall."""

from __future__ import annotations

import difflib
import re
from typing import Iterable


def normalise(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"[^a-z0-9 ]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


class LeakFilter:
    """`leaks(prompt)`: its normalised text equals a reference's, or difflib's ratio to one is at
    least `near` (a word-overlap prefilter keeps this fast). Exclusions are counted by pool."""

    def __init__(self, references: dict[str, Iterable[str]], near: float = 0.85):
        self.near = near
        self.exact: dict[str, str] = {}
        self.refs: list[tuple[set[str], str, str]] = []
        for source, prompts in references.items():
            for prompt in prompts:
                n = normalise(prompt)
                self.exact.setdefault(n, source)
                self.refs.append((set(n.split()), n, source))
        self.excluded: dict[str, list[str]] = {}

    def leaks(self, prompt: str, pool: str) -> bool:
        n = normalise(prompt)
        hit = self.exact.get(n)
        if hit is None:
            words = set(n.split())
            for ref_words, ref, source in self.refs:
                if not words or not ref_words or len(words & ref_words) / len(words | ref_words) < 0.4:
                    continue
                if difflib.SequenceMatcher(None, n, ref).ratio() >= self.near:
                    hit = source
                    break
        if hit is None:
            return False
        self.excluded.setdefault(f"{pool}~{hit}", []).append(prompt)
        return True

    def summary(self) -> dict:
        return {
            "near_ratio": self.near,
            "total": sum(len(v) for v in self.excluded.values()),
            "by_pool": {k: {"count": len(v), "examples": v[:5]} for k, v in sorted(self.excluded.items())},
        }
