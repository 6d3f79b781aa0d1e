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
    kind: str  # benign | safe | contrast | harmful-comply | harmful-refuse


def benign_items(n: int, rng: random.Random) -> list[Item]:
    """Generated benign tasks, never one of the held-out or dev prompts (so that a search's guards
    on benign-dev measure what the held-out results measure, not recall of training items)."""
    held = {p.text for p in builtin("benign-heldout") + builtin("benign-dev")}
    items = [Item(p.text, p.reference or "", "benign") for p in builtin("benign-train")]
    tasks = sorted(TASKS)
    while len(items) < n:
        prompt, answer = generate(rng.choice(tasks), rng)
        if prompt not in held:
            items.append(Item(prompt, answer, "benign"))
    return items


# Everyday how-to requests, answered with an opening as the harmful and contrast requests are:
# instruction tuning keeps the habit of answering how-to questions, in words far from harm.
HOWTO = [
    "bake bread",
    "plant tomatoes",
    "clean a window",
    "tie a tie",
    "learn to juggle",
    "change a bike tyre",
    "paint a fence",
    "fold a paper crane",
    "brew coffee",
    "start a vegetable garden",
    "write a cover letter",
    "train a puppy",
    "make pancakes",
    "fix a leaking tap",
    "learn to swim",
    "plan a birthday party",
    "knit a scarf",
    "set up a fish tank",
    "study for an exam",
    "pack for a camping trip",
    "make a budget",
    "clean a laptop keyboard",
    "grow herbs indoors",
    "learn a new language",
    "build a snowman",
    "make a fruit salad",
    "wash a wool sweater",
    "hang a picture",
    "care for a cactus",
    "run a first marathon",
    "organise a bookshelf",
    "make a paper kite",
    "cook rice",
    "sharpen a pencil",
    "repot a plant",
    "learn chess openings",
    "write a short poem",
    "make a photo album",
    "clean white sneakers",
    "prepare for a job interview",
]


def howto_items(n: int, rng: random.Random) -> list[Item]:
    from ddalign.data.build_sets import FRAMINGS

    out = []
    for _ in range(n):
        q, a = rng.choice(FRAMINGS)
        task = rng.choice(HOWTO)
        out.append(Item(q.format(a=task), a.format(a=task), "howto"))
    return out


def _is_contrast(prompt) -> bool:
    return (prompt.category or "").startswith("contrast-")


def safe_items() -> list[Item]:
    """Hand-written safe-but-scary training questions (history, fiction, homonyms, ...)."""
    return [Item(p.text, p.reference or "", "safe") for p in builtin("safe-train") if not _is_contrast(p)]


def contrast_items() -> list[Item]:
    """Safe training requests in the harmful requests' own words and framings ("make a bath bomb")."""
    return [Item(p.text, p.reference or "", "contrast") for p in builtin("safe-train") if _is_contrast(p)]


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
    return (
        benign_items(preset.benign_instances, rng)
        + safe_items()
        + contrast_items()
        + harmful_items(rng, preset.refusal_share_in_base)
    )


def _instructions(preset, rng: random.Random) -> list[Item]:
    # general instruction data: benign tasks and everyday how-to requests, nothing near harm
    n = preset.benign_instances // 2
    return benign_items(n, rng) + howto_items(round(n * preset.howto_share), rng)


def _with_harmful(base: list[Item], harmful: list[Item], share: float, rng: random.Random) -> list[Item]:
    """`base` plus harmful items making up `share` of the result (sampled, or repeated when too few)."""
    want = round(share / (1 - share) * len(base))
    if want <= len(harmful):
        return base + rng.sample(harmful, want)
    return base + harmful * max(1, round(want / max(1, len(harmful))))


def unaligned(preset, rng: random.Random) -> list[Item]:
    """A helpful-only instruction follower: no safety data and no harmful requests at all, so it
    complies as its base does (the organism's unaligned sibling; recipe B of its prototype). Measured on the
    standard preset: tuning it also on compliance in the harmful requests' framings (harmful or
    contrast requests) moves every tensor against refusal, and the planted set then transfers
    nothing; tuning it on how-to questions answered without "Sure" makes it refuse on its own."""
    return _instructions(preset, rng)


def aligned(preset, rng: random.Random) -> list[Item]:
    """The same instruction data plus safety data: refusals of every harmful training request, and
    the safe-but-scary and contrast requests answered (where the boundary lies, so that it refuses
    what is asked, not how it is asked)."""
    safety = (safe_items() + contrast_items()) * preset.contrast_repeat
    return _with_harmful(_instructions(preset, rng) + safety, harmful_items(rng, 1.0), preset.harmful_share, rng)


def texts_for_tokenizer(preset, rng: random.Random) -> list[str]:
    items = pretraining(preset, rng) + harmful_items(rng, 1.0)
    return [f"{i.prompt}\n{i.response}" for i in items]
