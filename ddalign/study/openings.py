"""Refusal openings: one normalised key per answer, clusters of equal keys, and how uniform they are.

The key of an answer (`read_opening`): curly quotes folded to straight ones; the first sentence
that holds a word (a sentence ends at '.', '!', '?' or '…' before a space or the end, or at a line
break, so "1." of a list or a lone "**" is skipped); lower-cased (casefold); apostrophes deleted
("I’m" -> "im", "can't" -> "cant"); every other character that is not a letter (punctuation,
digits, symbols) made a space; the first `words` words kept. Equal keys form a cluster.

Uniformity of N refusals in clusters of shares p_i: 1 - H / ln N, H = -sum p_i ln p_i (nats). ln N
is the largest entropy N refusals can have (all openings different), so the score is 1 when every
refusal opens alike, 0 when no two do, on that one scale whatever N. It is not
normalised by ln K (K clusters): that is undefined for K = 1 and scores two equal clusters 0, as
low as openings that all differ. With N < 2 nothing can repeat: the score is None (undefined), not 1.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from ddalign.errors import DdalignError

DEFAULT_WORDS = 5
EXAMPLE_CHARS = 160  # of a cluster's example sentence (a sentence can run on for a whole answer)
QUOTES = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u02bc": "'",
        "\u2032": "'",
        "`": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u00ab": '"',
        "\u00bb": '"',
    }
)
NORMALISATION = (
    "curly quotes folded; the first sentence holding a word (ends at . ! ? or an ellipsis before a space or the "
    "end, or at a line break); casefolded; apostrophes deleted; other non-letters (punctuation, digits, "
    "symbols) as spaces; the first {words} words"
)
UNIFORMITY = (
    "1 - H / ln N: H the entropy (nats) of the cluster shares, N the number of refusals; 1 = all open alike, "
    "0 = no two alike; undefined (null) for N < 2"
)
_BOUNDARY = re.compile(r"[.!?\u2026]+(?=\s|$)|\n")


@dataclass(frozen=True)
class Opening:
    """An answer's opening: its key, the raw sentence it came from, and whether more text could change it."""

    key: str  # normalised, at most `words` words; "" when the answer holds no word
    sentence: str  # the first sentence with a word, as written (stripped)
    complete: bool  # the key has all its words, or its sentence ended


@dataclass(frozen=True)
class Cluster:
    opening: str
    count: int
    share: float  # of the refusals
    example: str  # the first refusal's sentence with this key, as written

    def as_dict(self) -> dict:
        return {"opening": self.opening, "count": self.count, "share": round(self.share, 6), "example": self.example}


@dataclass
class Clustering:
    """Refusal openings grouped by key, largest cluster first (ties: alphabetical)."""

    refusals: int
    words: int
    clusters: list[Cluster]
    entropy: float | None  # nats; None with no refusal
    uniformity: float | None  # 1 - H / ln N; None with fewer than 2 refusals

    @property
    def distinct(self) -> int:
        return len(self.clusters)

    @property
    def largest_share(self) -> float | None:
        return self.clusters[0].share if self.clusters else None

    def top(self, k: int) -> list[tuple[str, int]]:
        """The k largest clusters as (opening, count), the rest summed as one ("other", count)."""
        if k < 1:
            raise DdalignError(f"top clusters: expected a positive number, got {k}")
        shown = [(c.opening, c.count) for c in self.clusters[:k]]
        rest = sum(c.count for c in self.clusters[k:])
        return shown + ([("other", rest)] if rest else [])

    def as_dict(self) -> dict:
        def rounded(x: float | None) -> float | None:
            return None if x is None else round(x, 6)

        return {
            "refusals": self.refusals,
            "distinct": self.distinct,
            "largest_share": rounded(self.largest_share),
            "entropy": rounded(self.entropy),
            "uniformity": rounded(self.uniformity),
            "clusters": [c.as_dict() for c in self.clusters],
        }


def normalise(text: str) -> str:
    """Quotes folded, casefolded, apostrophes deleted, other non-letters as spaces, spaces collapsed."""
    text = text.translate(QUOTES).casefold().replace("'", "")
    # letters and their combining marks stay (category L*, M*), so non-Latin words are kept whole
    return " ".join("".join(c if unicodedata.category(c)[0] in "LM" else " " for c in text).split())


def read_opening(text: str, words: int = DEFAULT_WORDS) -> Opening:
    """The opening of one answer (see the module docstring)."""
    _check_words(words)
    text = text.translate(QUOTES)
    start = 0
    for end in _BOUNDARY.finditer(text):
        key = normalise(text[start : end.start()])
        if key:
            return Opening(_cut(key, words), text[start : end.end()].strip(), True)
        start = end.end()
    key = _cut(normalise(text[start:]), words)
    return Opening(key, text[start:].strip() if key else "", len(key.split()) == words)


def opening(text: str, words: int = DEFAULT_WORDS) -> str:
    """The normalised key of one answer's opening."""
    return read_opening(text, words).key


def cluster_openings(texts: Iterable[str], words: int = DEFAULT_WORDS) -> Clustering:
    """Cluster the openings of `texts` (the refusals) by key."""
    _check_words(words)
    read = [read_opening(t, words) for t in texts]
    counts = Counter(o.key for o in read)
    example: dict[str, str] = {}
    for o in read:
        example.setdefault(o.key, o.sentence[:EXAMPLE_CHARS])
    n = len(read)
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # largest first; ties alphabetical
    clusters = [Cluster(key, count, count / n, example[key]) for key, count in ordered]
    sizes = [c.count for c in clusters]
    return Clustering(n, words, clusters, entropy(sizes) if n else None, uniformity(sizes))


def entropy(counts: Sequence[int]) -> float:
    """Shannon entropy (nats) of the shares of `counts`; empty clusters count for nothing."""
    if any(c < 0 for c in counts):
        raise DdalignError(f"entropy: counts must be non-negative, got {list(counts)}")
    n = sum(counts)
    if n == 0:
        raise DdalignError("entropy: no items")
    return max(0.0, -sum(c / n * math.log(c / n) for c in counts if c))


def uniformity(counts: Sequence[int]) -> float | None:
    """1 - H / ln N over N = sum(counts) items: 1 when all fall in one cluster, 0 when each is alone;
    None when N < 2 (one refusal cannot show a pattern)."""
    n = sum(counts)
    if n < 2:
        return None
    return min(1.0, max(0.0, 1.0 - entropy(counts) / math.log(n)))


def _cut(key: str, words: int) -> str:
    return " ".join(key.split()[:words])


def _check_words(words: int) -> None:
    if not isinstance(words, int) or isinstance(words, bool) or words < 1:
        raise DdalignError(f"opening words: expected a positive integer, got {words!r}")
