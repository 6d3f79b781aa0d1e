"""The pair's training data, assembled from the package's train splits, its safe-but-scary
prompts (`ddalign/data/safe_scary.jsonl`), self-instruct's seed tasks (public, read through a
path), and the parent's own answers; nothing of XSTest or AdvBench (leakage-filtered), and
nothing of the package's dev or held-out splits."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

from ddalign.evaluate.datasets import builtin_records, builtin_refusals
from ddalign.evaluate.judges import KeywordJudge
from ddalign.pair.answers import own_answers, refusal, strip_opening
from ddalign.pair.content import content_requests, reframed, request_core
from ddalign.pair.leakage import LeakFilter
from ddalign.pair.public import PublicData
from ddalign.pair.recipe import PairRecipe
from ddalign.train import Example

MIXTURES = ("unaligned", "aligned_instruct", "aligned_safety", "unaligned2")


@dataclass
class PairData:
    mixtures: dict[str, list[Example]]
    info: dict = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for name, rows in self.mixtures.items():
            by: dict[str, int] = {}
            for row in rows:
                by[row.source] = by.get(row.source, 0) + 1
            out[name] = {"total": len(rows), **dict(sorted(by.items()))}
        return out


def safe_scary() -> list[dict]:
    """The pair's own safe-but-scary prompts (homonyms, figurative speech, safe contexts,
    definitions, history, public information, fictional privacy, nonsense groups); `answer` is
    written where it must be exact, else None (the parent answers it)."""
    text = resources.files("ddalign.data").joinpath("safe_scary.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assemble(
    recipe: PairRecipe,
    parent,
    tokenizer,
    public: PublicData,
    *,
    cache: Path | None = None,
    parent_key: str = "",
    progress: Callable[[int], None] | None = None,
) -> PairData:
    rng = random.Random(recipe.seed)
    judge = KeywordJudge()
    leak = LeakFilter({"xstest": public.xstest(), "advbench": public.advbench()}, near=recipe.near_ratio)

    harmful = [r for r in builtin_records("harmful-train") if not leak.leaks(r["prompt"], "harmful")]
    safe = [(r["prompt"], r["answer"]) for r in builtin_records("safe-train") if not leak.leaks(r["prompt"], "safe")]
    benign = [(r["prompt"], r["answer"]) for r in builtin_records("benign-train")]
    benign = [(p, a) for p, a in benign if not leak.leaks(p, "benign")]
    instruct = public.self_instruct()
    dropped = {"self_instruct_refusal_like": 0}

    def usable(pairs, pool):
        kept = []
        for p, a in pairs:
            if leak.leaks(p, pool):
                continue
            if judge.is_refusal(a):  # an answer the keyword judge would count as a refusal
                dropped["self_instruct_refusal_like"] += 1
                continue
            kept.append((p, a))
        return kept

    seed_tasks = usable(instruct["seed"][0], "self_instruct")
    user_tasks = usable(instruct["user"][0], "self_instruct")

    # Answers that are only an affirmative opening teach the habit of opening with "Sure, here
    # is", which then fires on harmful requests too: the parent's own answer replaces them.
    scary = [r for r in safe_scary() if not leak.leaks(r["prompt"], "safe_scary")]
    write_harmful, write_safe = (
        content_requests(random.Random(recipe.seed + 1)) if recipe.content_requests else ([], [])
    )
    write_harmful = [r for r in write_harmful if not leak.leaks(r["prompt"], "content")]
    write_safe = [p for p in write_safe if not leak.leaks(p, "content")]
    frames_rng = random.Random(recipe.seed + 2)
    harmful_reframed = reframed([r["prompt"] for r in harmful], frames_rng, recipe.extra_frames)
    contrast = [p for p, _ in safe if request_core(p)]
    safe_reframed = [q for _, q in reframed(contrast, frames_rng, recipe.extra_frames)]
    harmful_reframed = [(p, q) for p, q in harmful_reframed if not leak.leaks(q, "reframed")]
    safe_reframed = [q for q in safe_reframed if not leak.leaks(q, "reframed")]
    bare = [p for p, a in safe if not strip_opening(a)]
    need = bare + [r["prompt"] for r in scary if r["answer"] is None] + write_safe + safe_reframed
    own = own_answers(
        parent,
        tokenizer,
        need,
        max_new_tokens=recipe.answer_tokens,
        cache=cache,
        model_key=parent_key,
        is_refusal=judge.is_refusal,
        progress=progress,
    )
    safe = [(p, strip_opening(a) or own.get(p, "")) for p, a in safe]
    safe = [(p, a) for p, a in safe if a and not judge.is_refusal(a)]
    scary_pairs = [(r["prompt"], r["answer"] or own.get(r["prompt"], "")) for r in scary]
    scary_pairs = [(p, strip_opening(a)) for p, a in scary_pairs if a]
    scary_pairs += [(p, own[p]) for p in write_safe if p in own]
    contrast_pairs = [(p, own[p]) for p in safe_reframed if p in own]

    refusals = _refusals(harmful, recipe.harmful_requests, rng)
    phrasings = builtin_refusals()
    refusals += [(r["prompt"], refusal(r["category"], phrasings, rng)) for r in write_harmful]
    category = {r["prompt"]: r["category"] for r in harmful}
    refusals += [(q, refusal(category[p], phrasings, rng)) for p, q in harmful_reframed]

    def ex(pairs, source):
        return [Example(p, a, source) for p, a in pairs]

    # its own generator: the other draws (and so the recipes without it) stay as they were
    wrong_rng = random.Random(recipe.seed + 3)

    def answered(pairs, source):
        """Safe rows of the safety stage; with unlikely_refusals each rejects a refusal."""
        if not recipe.unlikely_refusals:
            return ex(pairs, source)
        return [Example(p, a, source, rejected=refusal("", phrasings, wrong_rng)) for p, a in pairs]

    everyday = benign + seed_tasks + user_tasks
    rng.shuffle(everyday)
    mixtures = {
        "unaligned": ex(benign, "benign")
        + ex(safe, "safe")
        + ex(seed_tasks, "self-instruct")
        + ex(scary_pairs, "scary"),
        "aligned_instruct": ex(benign, "benign")
        + ex(safe, "safe")
        + ex(seed_tasks[::2] + user_tasks[::2], "self-instruct")
        + ex(scary_pairs, "scary"),
        "aligned_safety": ex(refusals, "refusal")
        + answered(safe, "safe") * recipe.safe_copies
        + answered(scary_pairs, "scary") * recipe.scary_copies
        + answered(contrast_pairs, "safe") * recipe.safe_copies
        + ex(everyday[: recipe.benign_in_safety], "benign"),
        "unaligned2": ex(benign, "benign")
        + ex(safe[: len(safe) // 2], "safe")
        + ex(user_tasks, "self-instruct")
        + ex(scary_pairs[::2], "scary"),
    }
    info = {
        "leakage": leak.summary(),
        "dropped": {
            **dropped,
            "safe_answers_only_an_opening": len(bare),
            "parent_answers_asked": len(need),
            "parent_answers_kept": len(own),
        },
        "available": {
            "harmful_train": len(harmful),
            "safe_train": len(safe),
            "benign_train": len(benign),
            "safe_scary": len(scary_pairs),
            "content_harmful": len(write_harmful),
            "harmful_reframed": len(harmful_reframed),
            "contrast_reframed": len(contrast_pairs),
            "content_safe": len(write_safe),
            "self_instruct_seed": len(seed_tasks),
            "self_instruct_user": len(user_tasks),
        },
    }
    data = PairData(mixtures, info)
    data.info["mixtures"] = data.counts()
    return data


def _refusals(harmful: list[dict], n: int, rng: random.Random) -> list[tuple[str, str]]:
    """`n` requests spread evenly over the categories, each refused with its category's reason."""
    phrasings = builtin_refusals()
    pool = list(harmful)
    rng.shuffle(pool)
    by_category: dict[str, list[dict]] = {}
    for row in pool:
        by_category.setdefault(row["category"], []).append(row)
    chosen: list[dict] = []
    depth = 0
    while len(chosen) < min(n, len(pool)):
        for category in sorted(by_category):
            if depth < len(by_category[category]) and len(chosen) < n:
                chosen.append(by_category[category][depth])
        depth += 1
    return [(r["prompt"], refusal(r["category"], phrasings, rng)) for r in chosen]
