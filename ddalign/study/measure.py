"""One model's greedy answers to the harmful prompts, judged: the evaluator's loading, batching and
generation, without its early stop (a row stopped at the first refusal marker would lose the rest
of its first sentence, which is what the study clusters)."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ddalign.evaluate.generate import GenerationConfig, Generator, load_model


@dataclass
class Answer:
    """One harmful prompt's answer and verdict."""

    id: str | None
    category: str | None
    prompt: str
    text: str
    refused: bool
    stop: str  # "eos" | "length" (never "stop_when": no early stop here)


@dataclass
class ModelAnswers:
    model: str
    answers: list[Answer]
    generation: dict  # the generator's settings (Generator.describe) with early_stop false
    cost: dict = field(default_factory=dict)


def answer_harmful(
    model: str,
    prompts: Sequence,
    *,
    judge,
    config: GenerationConfig,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ModelAnswers:
    """Load `model` (a folder or Hub id), answer every prompt greedily in full, judge the answers;
    the model is released before returning (the study loads several in turn)."""
    started = time.perf_counter()
    loaded, tokenizer = load_model(
        model,
        device=config.device,
        dtype=config.dtype,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    load_seconds = time.perf_counter() - started
    generator = None
    try:
        generator = Generator(loaded, tokenizer, config)
        texts = [p if isinstance(p, str) else p.text for p in prompts]
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, len(texts))

        if progress is not None:
            progress(0, len(texts))
        gens = generator.generate_detailed(texts, stop_when=None, progress=tick)
        t0 = time.perf_counter()
        refused = judge.judge([g.text for g in gens], texts)
        judge_seconds = time.perf_counter() - t0
        generation = {**generator.describe(), "early_stop": False}
        cost = generator.stats.as_dict()
    finally:
        loaded = generator = None  # noqa: F841 (dropped so that _release can free them)
        _release()
    cost["generation_seconds"] = cost.pop("seconds")
    cost.update(
        load_seconds=round(load_seconds, 4),
        judge_seconds=round(judge_seconds, 4),
        seconds=round(time.perf_counter() - started, 4),
    )
    answers = [
        Answer(getattr(p, "id", None), getattr(p, "category", None), t, g.text, bool(r), g.stop)
        for p, t, g, r in zip(prompts, texts, gens, refused)
    ]
    return ModelAnswers(model, answers, generation, cost)


def _release() -> None:
    """Free a model's memory before the next one loads."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
