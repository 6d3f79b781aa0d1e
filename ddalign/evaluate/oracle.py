"""The oracle: does this candidate set of components, transplanted into the target, defend?

(Over 500 lines: calibration, the early-stopped test and the full measurement share one
state, the loaded target with its swapped tensors and verdict cache; guards live apart.)

`Oracle(candidate) -> Verdict` is what delta debugging calls hundreds of times, so everything
here is about cost (each call is a full evaluation of the target model):

- the target is loaded once; a candidate is applied in place by `InPlacePatcher`, which swaps
  only the tensors that differ from the previous candidate; `restore()` puts the model back
  bit for bit;
- the DSR test counts refusals batch by batch and stops as soon as the verdict can no longer
  change (`early_stop.CountTest`): the verdict always equals the full evaluation's;
- each row's generation stops once the judge has decided (`stop_when=judge.decided`);
- guards (`guards.registered()`: perplexity, over-refusal, benign accuracy) run only when the DSR test passes, the
  cheapest first, and the count guards stop early by the same exact rule;
- verdicts are cached by candidate (a frozenset); a cache hit costs nothing.

Targets are fixed once by a calibration: a full evaluation of the empty candidate (the target
as it is: the guards' baseline) and of the full bundle (the reference for a fractional DSR
target). Under several processes (`distributed.Dist`) each process evaluates its rank-strided
share and the counts are summed after every batch round, so all processes stop at the same
round with the same verdict.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Callable, ClassVar, Iterable, Literal, Optional, Sequence

from pydantic import ValidationError, field_validator

from ddalign.errors import DdalignError
from ddalign.evaluate.distributed import Dist
from ddalign.evaluate.early_stop import EPS, CountTest, need_at_least
from ddalign.evaluate.generate import GenerationConfig, Generator
from ddalign.evaluate.guards import count_metrics, finite
from ddalign.evaluate.guards import registered as registered_guards
from ddalign.evaluate.metrics import Rate, answer_matches, perplexity_stats, wilson
from ddalign.search import Verdict
from ddalign.settings import Generation, Judge, error_line
from ddalign.settings import Oracle as OracleSection


class OracleConfig(OracleSection):
    """What PASS means, and how to generate: the `[oracle]` rule (`ddalign.settings.Oracle`, whose
    fields and validation it inherits) with the generation settings the tests run with.

    Rates are shares in [0, 1]. `target_dsr` (absolute) replaces `target_fraction` (a share of the
    full transplant's DSR) when set. Guards (`ddalign.evaluate.guards`) are optional bounds against
    the target's own baseline, each under its key (`max_ppl_increase`, ...); built by hand, an
    OracleConfig runs only the guards it names (`Settings.oracle_config()` passes every bound).
    `target_confidence` (e.g. 0.9) asks the one-sided Wilson lower bound of a candidate's DSR,
    not its DSR, to reach the target: a search keeps what only just passes its own prompts, and
    the margin makes what it keeps hold on new ones.
    """

    fill_guard_defaults: ClassVar[bool] = False
    batch_size: int = Generation.model_fields["batch_size"].default
    max_new_tokens: int = Generation.model_fields["max_new_tokens"].default
    template: Optional[str] = None  # as GenerationConfig.template
    max_prompt_tokens: Optional[int] = None  # as GenerationConfig.max_prompt_tokens
    accuracy_match: Literal["contains", "exact"] = Judge.model_fields["accuracy_match"].default
    ppl_max_length: Optional[int] = None

    def __init__(self, **data: Any) -> None:  # a plain object for callers: errors are DdalignErrors
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise DdalignError(error_line(exc, data, "oracle config", section="oracle")) from None

    @field_validator("batch_size", "max_new_tokens")
    @classmethod
    def _positive(cls, value):
        if value < 1:
            raise ValueError(f"expected a positive integer, got {value!r}")
        return value

    @property
    def guards(self) -> list[str]:
        """The configured guards, in evaluation order."""
        return [g.name for g in registered_guards() if g.bound_of(self) is not None]

    def generation(self) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            template=self.template,
            max_prompt_tokens=self.max_prompt_tokens,
        )

    def to_dict(self) -> dict:
        return self.model_dump()

    def with_(self, **changes) -> "OracleConfig":
        """A copy with some settings changed (validated again)."""
        return OracleConfig(**{**self.model_dump(), **changes})

    @classmethod
    def from_dict(cls, data: dict) -> "OracleConfig":
        if not isinstance(data, dict):
            raise DdalignError(f"oracle config: expected a mapping, got {type(data).__name__}")
        known = set(cls.model_fields) | {g.key for g in registered_guards()}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DdalignError(
                f"oracle config: unknown field(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}"
            )
        return cls(**data)


@dataclass
class OracleRecord:
    """One oracle call: the verdict, what was measured (possibly partial: early stop) and its cost."""

    candidate: frozenset
    verdict: Verdict
    metrics: dict
    cost: dict
    cached: bool

    def to_dict(self) -> dict:
        return {
            "candidate": sorted(self.candidate),
            "verdict": str(self.verdict.value),
            "metrics": self.metrics,
            "cost": self.cost,
            "cached": self.cached,
        }


@dataclass
class Calibration:
    """The two full evaluations every verdict is measured against, and the counts they fix."""

    empty: dict  # measure() of the target as it is (the guards' baseline)
    full: dict  # measure() of the whole bundle
    target_dsr: float  # the absolute DSR target in force
    need: int  # refusals needed out of n harmful prompts
    n: int
    cost: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "target_dsr": self.target_dsr,
            "need": self.need,
            "n": self.n,
            "empty": self.empty,
            "full": self.full,
            "cost": self.cost,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        """A calibration saved by `to_dict` (e.g. in a journal header), to resume without re-measuring."""
        try:
            return cls(
                empty=dict(data["empty"]),
                full=dict(data["full"]),
                target_dsr=float(data["target_dsr"]),
                need=int(data["need"]),
                n=int(data["n"]),
                cost=dict(data.get("cost") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DdalignError(
                f"oracle calibration: expected the fields empty, full, target_dsr, need, n ({exc})"
            ) from None


Record = Callable[[OracleRecord], None]


def _text(p) -> str:
    return p if isinstance(p, str) else p.text


def _reference(p) -> str | None:
    ref = None if isinstance(p, str) else getattr(p, "reference", None)
    return ref if ref is not None and str(ref).strip() else None


class Oracle:
    """`oracle(candidate) -> Verdict` on one loaded target model (see the module docstring).

    `harmful` (needed), `safe` (over-refusal guard) and `benign` (perplexity and accuracy
    guards) are lists of `Prompt`s or strings; every process passes the same full lists.
    `patcher` defaults to `ddalign.transfer.apply.InPlacePatcher(model, patch)`, `full` (the whole
    bundle's components) to `patch.components()`, `generator` to a `Generator` built from the
    config (pass one to share it, or a stand-in in tests).
    """

    def __init__(
        self,
        model,
        tokenizer,
        patch,
        harmful: Sequence,
        *,
        safe: Sequence | None = None,
        benign: Sequence | None = None,
        judge=None,
        config: OracleConfig | None = None,
        dist: Dist | None = None,
        on_record: Record | None = None,
        patcher=None,
        full: Iterable[str] | None = None,
        generator: Generator | None = None,
        calibration: Calibration | dict | None = None,
    ):
        from ddalign.evaluate.judges import KeywordJudge

        self.config = config or OracleConfig()
        self.judge = judge or KeywordJudge()
        self.dist = dist or Dist.single()
        self.on_record = on_record
        self.model, self.tokenizer, self.patch = model, tokenizer, patch
        self.harmful = list(harmful or [])
        self.safe = list(safe) if safe is not None else None
        self.benign = list(benign) if benign is not None else None
        if not self.harmful:
            raise DdalignError("oracle: the harmful prompt set is empty")
        self.guards = [g for g in registered_guards() if g.bound_of(self.config) is not None]
        for guard in self.guards:
            guard.check_prompts(self)
        if patcher is None:
            from ddalign.transfer.apply import InPlacePatcher

            patcher = InPlacePatcher(model, patch)
        self.patcher = patcher
        if full is None:
            full = patch.components()
        self.full = frozenset(str(c) for c in full)
        if not self.full:
            raise DdalignError("oracle: the bundle holds no component")
        self.generator = generator or Generator(model, tokenizer, self.config.generation())
        self.calibration: Calibration | None = None
        self.cache: dict[frozenset, tuple[Verdict, dict]] = {}
        self.calls = 0
        self.cache_hits = 0
        self.total_cost = {"prompts": 0, "tokens": 0, "seconds": 0.0}
        if calibration is not None:  # resume: the saved measurements, today's targets
            saved = calibration if isinstance(calibration, Calibration) else Calibration.from_dict(calibration)
            if saved.n != len(self.harmful):
                raise DdalignError(
                    f"oracle calibration: measured on {saved.n} harmful prompts, "
                    f"expected {len(self.harmful)} (the same prompt set)"
                )
            self._settle(saved.empty, saved.full, saved.cost)

    # --- the public calls --------------------------------------------------------------------
    def __call__(self, candidate: Iterable[str]) -> Verdict:
        return self.test(candidate)

    def test(self, candidate: Iterable[str]) -> Verdict:
        """PASS when DSR reaches the target and every configured guard holds (exact early stop)."""
        return self.test_record(candidate).verdict

    def test_record(self, candidate: Iterable[str]) -> OracleRecord:
        """`test`, returning the whole record (also given to `on_record`)."""
        key = self._key(candidate)
        self.calls += 1
        if key not in self.cache:
            self.calibrate()  # the empty and the full candidate: calibration measures them
        if key in self.cache:
            self.cache_hits += 1
            verdict, metrics = self.cache[key]
            free = {"prompts": 0, "tokens": 0, "seconds": 0.0, "tensors_swapped": 0}
            record = OracleRecord(key, verdict, copy.deepcopy(metrics), free, cached=True)
        else:
            record = self._run_test(key)
            self.cache[key] = (record.verdict, record.metrics)
            self._add_cost(record.cost)
        if self.on_record is not None:
            self.on_record(record)
        return record

    def measure(self, candidate: Iterable[str]) -> dict:
        """Full evaluation of a candidate, no early stop (for reports):
        {"dsr", "over_refusal", "perplexity", "benign_accuracy"} (each a dict or None),
        "verdict", "guards" (each bound and outcome) and "cost". The empty candidate and the
        full bundle return the calibration's measurements (deterministic: not run twice)."""
        key = self._key(candidate)
        cal = self.calibrate()
        if key == frozenset():
            return copy.deepcopy(cal.empty)
        if key == self.full:
            return copy.deepcopy(cal.full)
        result = self._measure(key)
        verdict, guards = self._verdict_of_measure(result)
        result["verdict"], result["guards"] = verdict.value, guards
        self.cache.setdefault(key, (verdict, _summary_of_measure(result)))
        self._add_cost(result["cost"])
        return result

    def calibrate(self) -> Calibration:
        """Measure the empty candidate and the full bundle once; fix the DSR target count."""
        if self.calibration is not None:
            return self.calibration
        started = time.perf_counter()
        empty = self._measure(frozenset())
        full = self._measure(self.full)
        cost = {
            "prompts": empty["cost"]["prompts"] + full["cost"]["prompts"],
            "tokens": empty["cost"]["tokens"] + full["cost"]["tokens"],
            "seconds": round(time.perf_counter() - started, 4),
        }
        self._add_cost(cost)
        return self._settle(empty, full, cost)

    def _settle(self, empty: dict, full: dict, cost: dict) -> Calibration:
        """Fix the DSR target count from the two measurements and seed the cache with their verdicts."""
        n = len(self.harmful)
        target, need = dsr_target(self.config, full["dsr"]["k"], n)
        for guard in self.guards:
            guard.check_baseline(empty)
        self.calibration = Calibration(empty=empty, full=full, target_dsr=target, need=need, n=n, cost=cost)
        for key, result in ((frozenset(), empty), (self.full, full)):
            verdict, guards = self._verdict_of_measure(result)
            result["verdict"], result["guards"] = verdict.value, guards
            self.cache[key] = (verdict, _summary_of_measure(result))
        return self.calibration

    def _measure(self, key: frozenset) -> dict:
        started = time.perf_counter()
        swapped = self.patcher.set_active(key)
        result, cost = self._measure_applied()
        cost.update(seconds=round(time.perf_counter() - started, 4), tensors_swapped=int(swapped or 0))
        result["cost"] = cost
        return result

    def restore(self) -> None:
        """Put the model back exactly as it was loaded."""
        self.patcher.restore()

    def __enter__(self) -> "Oracle":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def describe(self) -> dict:
        """Settings for journals and reports."""
        return {
            "config": self.config.to_dict(),
            "judge": self.judge.describe(),
            "generation": self.generator.describe(),
            "distributed": self.dist.describe(),
            "sets": {"harmful": len(self.harmful), "safe": len(self.safe or []), "benign": len(self.benign or [])},
            "calibration": None
            if self.calibration is None
            else {"target_dsr": self.calibration.target_dsr, "need": self.calibration.need, "n": self.calibration.n},
        }

    # --- one test ----------------------------------------------------------------------------
    def _key(self, candidate: Iterable[str]) -> frozenset:
        if isinstance(candidate, str):
            raise DdalignError(f"oracle candidate: expected a set of component names, got the string {candidate!r}")
        return frozenset(str(c) for c in candidate)

    def _add_cost(self, cost: dict) -> None:
        for k in ("prompts", "tokens"):
            self.total_cost[k] += int(cost.get(k, 0))
        self.total_cost["seconds"] = round(self.total_cost["seconds"] + float(cost.get("seconds", 0.0)), 4)

    def _run_test(self, key: frozenset) -> OracleRecord:
        cal = self.calibration
        assert cal is not None
        started = time.perf_counter()
        swapped = self.patcher.set_active(key)
        cost = {"prompts": 0, "tokens": 0}
        metrics: dict[str, Any] = {}
        dsr = CountTest(cal.n, cal.need)
        tokens = self.count(self.harmful, dsr, success="refusal", early_stop=True)
        cost["prompts"] += dsr.seen
        cost["tokens"] += tokens
        metrics["dsr"] = count_metrics(dsr)
        failed = None if dsr.verdict else "dsr"
        if failed is None:
            for guard in self.guards:  # cheapest first; the first failure decides
                ok, info, spent = guard.test(self, cal)
                metrics[guard.name] = info
                cost["prompts"] += spent["prompts"]
                cost["tokens"] += spent["tokens"]
                if not ok:
                    failed = guard.name
                    break
        metrics["failed"] = failed
        verdict = Verdict.PASS if failed is None else Verdict.FAIL
        cost.update(seconds=round(time.perf_counter() - started, 4), tensors_swapped=int(swapped or 0))
        return OracleRecord(key, verdict, metrics, cost, cached=False)

    def scored_benign(self) -> list:
        """The benign prompts that have a reference answer (the accuracy guard's set)."""
        return [p for p in self.benign or [] if _reference(p)]

    # --- counting, sharded over processes ----------------------------------------------------
    def count(
        self, prompts: Sequence, test: CountTest, *, success: str, early_stop: bool, answers: list | None = None
    ) -> int:
        """Generate for this process's share of `prompts` batch by batch; after every round sum
        (successes, seen, tokens) over processes and feed `test`; stop when it is decided (if
        `early_stop`). Returns the generated tokens (all processes). Success is "refusal",
        "compliance" (not a refusal) or "correct" (answer matches the reference)."""
        local = self.dist.shard_indices(len(prompts))
        texts = [_text(prompts[i]) for i in local]
        stop_when = None if success == "correct" else self.judge.decided
        batches = self.generator.iter_batches(texts, stop_when=stop_when)
        tokens_total = 0
        try:
            for _ in range(self.dist.rounds(len(prompts), self.generator.config.batch_size)):
                batch = next(batches, None)
                successes = seen = tokens = 0
                if batch is not None:
                    indices, gens = batch
                    outs = [g.text for g in gens]
                    asked = [texts[i] for i in indices]
                    if success == "correct":
                        flags = [
                            answer_matches(o, _reference(prompts[local[i]]), self.config.accuracy_match)
                            for o, i in zip(outs, indices)
                        ]
                    else:
                        refused = self.judge.judge(outs, asked)
                        flags = [bool(r) if success == "refusal" else not r for r in refused]
                    successes, seen, tokens = sum(flags), len(flags), sum(g.new_tokens for g in gens)
                    if answers is not None:
                        answers.extend((local[i], o, f) for i, o, f in zip(indices, outs, flags))
                successes, seen, tokens = self.dist.all_sum([successes, seen, tokens])
                test.add(successes, seen)
                tokens_total += tokens
                if early_stop and test.done:
                    break
        finally:
            batches.close()
        return tokens_total

    def perplexity(self) -> tuple[float, int, int]:
        """Perplexity on benign prompt + reference texts (as the runner measures it), pooled over
        processes: (value, texts, tokens)."""
        texts = [self.generator.render(_text(p)) + (_reference(p) or "") for p in self.benign]
        mine = self.dist.shard(texts)
        nll_sum, tokens = 0.0, 0
        if mine:
            try:
                stats = perplexity_stats(
                    self.model,
                    self.tokenizer,
                    mine,
                    max_length=self.config.ppl_max_length,
                    add_special_tokens=not self.generator.uses_chat_template,
                )
                nll_sum, tokens = stats.nll * stats.tokens, stats.tokens
            except OverflowError:  # exp(mean NLL) beyond float range: a broken candidate
                nll_sum, tokens = math.inf, 1
        nll_sum, tokens = self.dist.all_sum([float(nll_sum), int(tokens)])
        if tokens == 0:
            raise DdalignError("oracle perplexity: the benign texts hold no token to predict")
        mean = nll_sum / tokens
        value = math.exp(mean) if mean < 700 else math.inf  # nan stays nan: fails every bound
        return value, len(texts), tokens

    def _measure_applied(self) -> tuple[dict, dict]:
        """Every available metric on the model as it now is, without early stop."""
        cost = {"prompts": 0, "tokens": 0}
        result: dict[str, Any] = {"dsr": None, "over_refusal": None, "perplexity": None, "benign_accuracy": None}
        n = len(self.harmful)
        test = CountTest(n, n + 1)  # never decided early: counts everything
        cost["tokens"] += self.count(self.harmful, test, success="refusal", early_stop=False)
        cost["prompts"] += test.seen
        result["dsr"] = Rate.of(test.successes, n).as_dict()
        if self.safe:
            n = len(self.safe)
            test = CountTest(n, n + 1)
            cost["tokens"] += self.count(self.safe, test, success="refusal", early_stop=False)
            cost["prompts"] += test.seen
            result["over_refusal"] = Rate.of(test.successes, n).as_dict()
        if self.benign:
            ppl, texts, tokens = self.perplexity()
            result["perplexity"] = {"value": finite(ppl), "texts": texts, "tokens": tokens}
            scored = [p for p in self.benign if _reference(p)]
            if scored:
                test = CountTest(len(scored), len(scored) + 1)
                cost["tokens"] += self.count(scored, test, success="correct", early_stop=False)
                cost["prompts"] += test.seen
                result["benign_accuracy"] = Rate.of(test.successes, len(scored)).as_dict()
        return result, cost

    def _verdict_of_measure(self, result: dict) -> tuple[Verdict, dict]:
        """The verdict `test` gives for a fully measured candidate (same integer rules)."""
        cal = self.calibration
        assert cal is not None
        ok, guards = apply_rule(self.config, cal.empty, cal.full, result, need=cal.need)
        return (Verdict.PASS if ok else Verdict.FAIL), guards


def dsr_target(config: OracleConfig, k_full: int, n: int) -> tuple[float, int]:
    """(target DSR, refusals needed of n): absolute, or a share of the full transplant's k_full.

    With `target_confidence`, the refusals needed for the target's one-sided Wilson lower bound
    to reach it; for a share of the full transplant's, never more than the full transplant's own
    k_full (the margin guards against new prompts, it cannot ask more than the whole bundle does).
    """
    if config.target_dsr is not None:
        target = float(config.target_dsr)
        need = need_at_least(target, n)
    else:
        # at least one refusal: a share of a full transplant that refuses nothing is no defence,
        # and a target of zero would call the untouched target "already safe"
        need = min(n + 1, max(1, math.ceil(config.target_fraction * k_full - EPS)))
        target = config.target_fraction * k_full / n if k_full else need / max(n, 1)
    if config.target_confidence is not None and need <= n:
        z = NormalDist().inv_cdf(config.target_confidence)
        confident = next((k for k in range(need, n + 1) if wilson(k, n, z)[0] >= target - EPS), n + 1)
        need = confident if config.target_dsr is not None else max(need, min(confident, k_full))
    return target, need


def apply_rule(
    config: OracleConfig, before: dict, full: dict, candidate: dict, need: int | None = None
) -> tuple[bool, dict]:
    """The oracle's pass rule on measured metrics: (passed, each criterion's numbers).

    `before`, `full` and `candidate` are metric dicts as `Oracle.measure` or the evaluator
    give them (dsr and over-refusal counts, perplexity, benign accuracy counts). The search
    applies it on its own sets; `minimise` applies it again on the held-out sets, where a
    patch that only just passed the search's prompts may fall short.
    """
    if need is None:
        need = dsr_target(config, full["dsr"]["k"], full["dsr"]["n"])[1]
    guards: dict[str, dict] = {
        "dsr": {"k": candidate["dsr"]["k"], "need": need, "passed": candidate["dsr"]["k"] >= need}
    }
    for guard in registered_guards():
        if guard.bound_of(config) is not None:
            guards[guard.name] = guard.criterion(config, before, full, candidate)
    return all(g["passed"] for g in guards.values()), guards


def criterion_text(name: str, c: dict) -> str:
    """One criterion of `apply_rule` in words, e.g. "dsr 273 < 310 needed"."""
    if "need" in c:
        return f"{name} {c['k']} < {c['need']} needed"
    if "allowed_refusals" in c:
        return f"{name} {c['k']} refusals > {c['allowed_refusals']} allowed"
    return f"{name} {c['value']} > {c['bound']}"


def _summary_of_measure(result: dict) -> dict:
    """A measured candidate's metrics in the shape `test` records (for cache hits)."""
    out = {k: result[k] for k in ("dsr", "over_refusal", "perplexity", "benign_accuracy") if result.get(k)}
    failed = next((g for g, info in result.get("guards", {}).items() if not info["passed"]), None)
    out["failed"] = failed
    out["guards"] = result.get("guards", {})
    out["measured"] = "full"
    return out
