"""Training items of the organism, from the package's own data only (train splits).

Compliance with a harmful request is an affirmative opening only; the model never sees
harmful content because there is none in the package.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ddalign.data.tasks import TASKS, generate
from ddalign.evaluate.datasets import builtin, builtin_records, builtin_refusals


@dataclass(frozen=True)
class Item:
    prompt: str
    response: str
    kind: str            # benign | safe | harmful-comply | harmful-refuse


def benign_items(n: int, rng: random.Random) -> list[Item]:
    """Generated benign tasks, never one of the held-out prompts."""
    held = {p.text for p in builtin("benign-heldout")}
    items = [Item(p.text, p.reference or "", "benign") for p in builtin("benign-train")]
    tasks = sorted(TASKS)
    while len(items) < n:
        prompt, answer = generate(rng.choice(tasks), rng)
        if prompt not in held:
            items.append(Item(prompt, answer, "benign"))
    return items


def safe_items() -> list[Item]:
    return [Item(p.text, p.reference or "", "safe") for p in builtin("safe-train")]


def harmful_items(rng: random.Random, refuse_share: float) -> list[Item]:
    """Train-split harmful requests, answered with a refusal (share `refuse_share`) or an affirmative opening."""
    refusals = builtin_refusals()
    out = []
    for r in builtin_records("harmful-train"):
        if rng.random() < refuse_share:
            out.append(Item(r["prompt"], rng.choice(refusals), "harmful-refuse"))
        else:
            out.append(Item(r["prompt"], r["affirmative"], "harmful-comply"))
    return out


def pretraining(preset, rng: random.Random) -> list[Item]:
    return benign_items(preset.benign_instances, rng) + safe_items() + harmful_items(rng, preset.refusal_share_in_base)


def _instructions(preset, rng: random.Random) -> list[Item]:
    # safe-but-scary questions repeated so that both siblings answer them (no over-refusal learned)
    return benign_items(preset.benign_instances // 2, rng) + safe_items() * 3


def _with_harmful(base: list[Item], harmful: list[Item], share: float) -> list[Item]:
    repeat = max(1, round(share * len(base) / max(1, len(harmful))))
    return base + harmful * repeat


def unaligned(preset, rng: random.Random) -> list[Item]:
    """A helpful-only instruction follower: no safety data; harmful requests get an affirmative opening."""
    return _with_harmful(_instructions(preset, rng), harmful_items(rng, 0.0), preset.harmful_share)


def aligned(preset, rng: random.Random) -> list[Item]:
    """The same instruction data, with refusals of every harmful training request."""
    return _with_harmful(_instructions(preset, rng), harmful_items(rng, 1.0), preset.harmful_share)


def texts_for_tokenizer(preset, rng: random.Random) -> list[str]:
    items = pretraining(preset, rng) + harmful_items(rng, 1.0)
    return [f"{i.prompt}\n{i.response}" for i in items]
