"""Probabilistic delta debugging (ProbDD, Wang et al. FSE 2021), guided by a prior, then a 1-minimal pass."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

from ddalign.errors import DdalignError
from ddalign.search.core import (
    Key,
    OnTest,
    Prior,
    Progress,
    SearchResult,
    Test,
    Verdict,
    _flat,
    _prior_fn,
    _Session,
    _unique,
)

# An item is taken as needed once its probability is this close to 1.
_CERTAIN = 1.0 - 1e-9


def _probdd_core(session: _Session, items: list, level: str, prior: Callable[[Any], float], p0: float) -> list:
    """ProbDD on a passing `items`, then a pass that makes the result 1-minimal.

    ProbDD (Wang et al., FSE 2021): every item has a probability of being needed; remove the
    group of least likely items that maximises the expected number removed (k * P(all k can
    go)); on a failure raise the group's probabilities by Bayes' rule (at least one of them is
    needed); an item alone in a failing group is needed. One addition: the items outside any
    failing group take an estimated density instead of a fixed p0 (see below).
    """
    position = {item: i for i, item in enumerate(items)}
    weight = {item: prior(item) for item in items}
    # The prior orders the removals, and it raises probabilities as far as the answers so far
    # trust it: an item weighing s times the median counts as s items of the estimated density
    # (`1 - (1 - base) ** s`), mixed with the plain density by `trust`, the posterior probability
    # (even odds at first) that the weights are informative, updated by each answer's likelihood
    # under the two models. Why: the organism's delta norms single out its planted components,
    # and ProbDD that only ordered by them spent its tests on groups the norms said were needed
    # (57 modules: 24 tests -> 16, hierarchical 31 -> 19; ddmin 45). On synthetic oracles
    # (bench_search.py): 2-4% fewer tests with an informative prior, 2-7% more with an
    # uninformative, misleading or outlier-heavy one. Measured while designing it (one seed, not in
    # the bench): believing the weights outright (no trust) cost 19-32% more with those, and
    # scaling p linearly by them 20% more.
    p = {item: p0 for item in items}
    ranked = sorted(weight.values())
    median = ranked[len(ranked) // 2] if ranked else 0.0
    scale = {item: max(1.0, weight[item] / median) if median > 0 else 1.0 for item in items}
    log_odds = 0.0  # log P(prior informative | answers) / P(not | answers)

    def density(x, base: float, informative: bool) -> float:
        return 1.0 - (1.0 - base) ** scale[x] if informative else base

    raised: set = set()  # items whose probability a failing test has raised
    alpha, beta = 1.0, 1.0 / p0 - 1.0  # Beta prior on the density, mean p0
    removed = fails = 0
    current = list(items)
    while True:
        # Items no failure has pointed at share the estimated density of needed items: it
        # falls as removals pass (groups grow: a sparse set is found in ~log n tests) and
        # rises with failures. Plain ProbDD keeps p0 for them, which costs ~sqrt(n) tests
        # more when one item is needed among 1024 (bench_search.py).
        base = (alpha + fails) / (alpha + beta + removed + fails)
        trust = 1.0 / (1.0 + math.exp(-log_odds))
        for x in current:
            if x not in raised:
                # (the mix equals base when scale is 1; taking base itself keeps a search
                # without a prior bit for bit what it was: float noise would reorder ties)
                p[x] = (
                    base
                    if scale[x] == 1.0
                    else (trust * density(x, base, True) + (1.0 - trust) * density(x, base, False))
                )
        uncertain = [x for x in current if p[x] < _CERTAIN]
        if not uncertain:
            break
        # Least likely needed first; on ties the smallest prior (delta norm) goes first.
        uncertain.sort(key=lambda x: (p[x], weight[x], position[x]))
        best_k, best_gain, keep_prob = 1, -1.0, 1.0
        for k, x in enumerate(uncertain, 1):
            keep_prob *= 1.0 - p[x]
            gain = k * keep_prob
            if gain > best_gain:
                best_k, best_gain = k, gain
        group = set(uncertain[:best_k])
        candidate = [x for x in current if x not in group]
        expected = sum(p[x] for x in uncertain)
        session.estimate(
            max(1.0, expected) * (1 + math.log2(1 + len(uncertain) / max(1.0, expected)))
            + len(current)
            - len(uncertain)
        )
        verdict = session.ask(candidate, level)
        likelihood = []
        for informative in (True, False):
            keep = math.prod(1.0 - (p[x] if x in raised else density(x, base, informative)) for x in group)
            likelihood.append(max(keep if verdict is Verdict.PASS else 1.0 - keep, 1e-300))
        log_odds = max(-30.0, min(30.0, log_odds + math.log(likelihood[0]) - math.log(likelihood[1])))
        if verdict is Verdict.PASS:
            current = candidate
            removed += len(group)
            continue
        fails += 1
        raised |= group
        if len(group) == 1:
            p[next(iter(group))] = 1.0
            continue
        all_removable = math.prod(1.0 - p[x] for x in group)
        for x in group:
            p[x] = min(1.0, p[x] / (1.0 - all_removable))
    return _one_minimal_pass(session, current, level)


def _one_minimal_pass(session: _Session, current: list, level: str) -> list:
    """Remove single items while that still passes, until none can go (1-minimality).

    On a monotone oracle the probabilistic phase already guarantees it; this pass then asks
    only questions that are cached or inferred, plus those about items whose removal failed
    before the set shrank further.
    """
    changed = True
    while changed and current:
        changed = False
        for x in list(current):
            if x not in current:
                continue
            candidate = [y for y in current if y != x]
            session.estimate(len(current))
            if session.ask(candidate, level) is Verdict.PASS:
                current, changed = candidate, True
    session.estimate(0)
    return current


def _default_p0(n: int) -> float:
    """ProbDD's initial probability of an item being needed: 1 / (2 sqrt(n)).

    Small values make the first groups large (close to a binary search, good when few items
    are needed); the Bayesian updates then shrink the groups where failures show that needed
    items are dense. Chosen on synthetic monotone oracles (n = 16 to 1024, 1 to 16 needed):
    fewer tests in total than 1/n, 2/n, n^-0.75 and ProbDD's usual 0.1; since the density is
    re-estimated during the search, the choice matters little (0.1 costs ~4% more).
    """
    return min(0.5, 0.5 / math.sqrt(max(n, 1)))


def probdd(
    items: Iterable,
    test: Test,
    *,
    prior: Prior = None,
    p0: float | None = None,
    assume_monotone: bool = False,
    cache: Mapping | None = None,
    on_test: OnTest | None = None,
    progress: Progress | None = None,
    level: str = "flat",
    key: Key | None = None,
    max_tests: int | None = None,
) -> SearchResult:
    """A 1-minimal passing subset by probabilistic delta debugging (ProbDD) + a 1-minimal pass.

    prior: item -> weight (dict or function; larger = more likely needed, e.g. delta norms);
    items with smaller weights are tried for removal first, and items far above the median
    weight are taken as more likely needed as far as the answers so far bear the weights out.
    p0: the prior mean of the share of needed items (default: 1 / (2 sqrt(n))); the search
    re-estimates it as tests come in.
    max_tests: stop after this many real tests with the last passing set (`result.stopped` says so).
    """
    items_list = _unique(items)
    if p0 is None:
        p0 = _default_p0(len(items_list))
    if not 0.0 < p0 < 1.0:
        raise DdalignError(f"probdd p0: expected a probability in (0, 1), got {p0}")
    weights = _prior_fn(prior)

    def core(session: _Session, its: list, lvl: str) -> list:
        return _probdd_core(session, its, lvl, weights, p0)

    return _flat(
        core,
        items_list,
        test,
        assume_monotone=assume_monotone,
        cache=cache,
        on_test=on_test,
        progress=progress,
        level=level,
        key=key,
        max_tests=max_tests,
    )
