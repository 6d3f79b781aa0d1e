"""Delta debugging over components: ddmin, probabilistic DD and hierarchical DD.

Model-free on purpose: every algorithm takes a list of items (any hashable values) and a
`test(subset) -> Verdict` function, where PASS means the subset is still "interesting" (the
transplant still defends). Each oracle call is expensive (a full evaluation of a model), so
everything here serves fewer calls:

- verdicts are cached by `frozenset(subset)` (or by `key(subset)`, e.g. the set of concrete
  components a mix of layers and modules stands for): a subset is never tested twice, and a cache
  pre-filled from a journal makes a resumed search free (the algorithms are deterministic, so
  replaying one with the known verdicts asks the oracle only for what was never answered);
- with `assume_monotone=True`, verdicts implied by known ones are inferred instead of tested
  (a superset of a passing set passes, a subset of a failing set fails);
- `probdd` (ProbDD, Wang et al. FSE 2021) removes groups of items whose size maximises the
  expected gain under a per-item probability of being needed, ordered by a prior (the
  per-component delta norms: the smallest are tried for removal first, and the largest are
  taken as likelier needed while the answers bear the norms out), in O(n) tests in the
  worst case instead of ddmin's O(n^2), with a final pass that makes its result 1-minimal;
- `hierarchical` searches coarse units first (layers), then the children of the kept ones
  (modules, then row blocks), each level started from the previous level's result.

`ddmin` (Zeller and Hildebrandt 2002) is kept as the reference.

Modules: `core` (verdicts, records, results, the oracle session), `ddmin`, `probdd`,
`hierarchical`.
"""

from __future__ import annotations

from ddalign.search.core import LevelResult, SearchError, SearchResult, TestRecord, Verdict, is_one_minimal
from ddalign.search.ddmin import ddmin
from ddalign.search.hierarchical import ALGORITHMS, LEVEL_ALGORITHMS, hierarchical
from ddalign.search.probdd import probdd

__all__ = [
    "Verdict",
    "SearchError",
    "TestRecord",
    "LevelResult",
    "SearchResult",
    "ddmin",
    "probdd",
    "hierarchical",
    "is_one_minimal",
    "ALGORITHMS",
    "LEVEL_ALGORITHMS",
]
