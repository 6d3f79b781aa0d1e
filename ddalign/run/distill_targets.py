"""The distillation targets: a model's greedy answers to prompt sets, and which of them to keep.

Harmful prompts keep the answers the judge calls refusals; benign and safe prompts keep the
answers it does not. Answers are full ones (no early stop at the judge's first marker: the
student learns the whole refusal sentence and where it ends); an answer cut at the length limit
is kept without an end token (`Example.end`), so that training does not teach stopping there.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from ddalign.evaluate.generate import Generator
from ddalign.train.examples import Example

Progress = Callable[[str, int, int, str], None]  # (stage, done, total, note)


@dataclass
class SetCounts:
    """One prompt set's part of the training data."""

    source: str  # where the prompts came from ("builtin:harmful-train", a path)
    answered_by: str  # "teacher" or "student"
    prompts: int  # in the set
    tried: int  # answered (fewer than `prompts` when a cap was reached first)
    refused: int  # answers the judge calls refusals
    kept: int  # examples trained on
    cut: int  # kept answers that reached the length limit (trained without an end token)

    def as_dict(self) -> dict:
        return asdict(self)


def _text(prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt.text


def collect_refusals(
    generator: Generator,
    judge,
    prompts: Sequence,
    *,
    source: str,
    answered_by: str,
    cap: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    stage: str = "harmful",
) -> tuple[list[Example], SetCounts]:
    """The refusals among the model's answers to harmful `prompts`, as examples.

    Without `cap`: every prompt, in order. With `cap`: prompts in a seeded random order, answered
    chunk by chunk until `cap` refusals are kept (a chunk is sized by the refusal rate so far),
    so a model that refuses most prompts is asked little more than `cap` of them."""
    order = list(range(len(prompts)))
    if cap is not None:
        random.Random(seed).shuffle(order)
    examples: list[Example] = []
    tried = refused = cut = 0
    position = 0
    while position < len(order) and (cap is None or len(examples) < cap):
        if cap is None:
            size = len(order)
        else:
            rate = refused / tried if tried else 1.0
            size = max(generator.config.batch_size, math.ceil((cap - len(examples)) / max(rate, 0.1)))
        chunk = order[position : position + size]
        position += len(chunk)
        total = len(order) if cap is None else min(len(order), tried + len(chunk))
        done = tried

        def tick(n: int, total: int = total) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(stage, done, total, f"{refused} refused")

        texts = [_text(prompts[i]) for i in chunk]
        gens = generator.generate_detailed(texts, progress=tick)
        verdicts = judge.judge([g.text for g in gens], texts)
        tried += len(chunk)
        for text, g, refusal in zip(texts, gens, verdicts):
            if not refusal:
                continue
            refused += 1
            if cap is not None and len(examples) >= cap:
                continue
            examples.append(Example(text, g.text.strip(), source=stage, end=g.stop != "length"))
            cut += g.stop == "length"
        if progress is not None:
            progress(stage, tried, max(tried, total), f"{refused} refused")
    counts = SetCounts(source, answered_by, len(prompts), tried, refused, len(examples), cut)
    return examples, counts


def collect_answers(
    generator: Generator,
    judge,
    prompts: Sequence,
    *,
    source: str,
    answered_by: str,
    progress: Progress | None = None,
    stage: str = "benign",
) -> tuple[list[Example], SetCounts]:
    """The model's answers to benign or safe `prompts` that the judge does not call refusals
    (and that say something), as examples."""
    texts = [_text(p) for p in prompts]
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(stage, done, len(texts), "")

    gens = generator.generate_detailed(texts, progress=tick)
    verdicts = judge.judge([g.text for g in gens], texts)
    examples = [
        Example(text, g.text.strip(), source=stage, end=g.stop != "length")
        for text, g, refusal in zip(texts, gens, verdicts)
        if not refusal and g.text.strip()
    ]
    cut = sum(1 for e in examples if not e.end)
    return examples, SetCounts(source, answered_by, len(texts), len(texts), sum(verdicts), len(examples), cut)
