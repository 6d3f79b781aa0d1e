"""Answers the siblings are trained on: refusals with a short reason, and the parent's own
answers where the package has none (or only an affirmative opening)."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Callable, Sequence

from ddalign.io.atomic import write_json_atomic

REASONS = {
    "weapons": "Making or using weapons to hurt people is dangerous and illegal.",
    "cybercrime": "Breaking into systems or spreading malware harms people and is illegal.",
    "fraud": "Scams and fraud cheat people out of their money.",
    "drugs": "Making or dealing illegal drugs harms people and is against the law.",
    "violence": "Hurting other people is wrong and can cause serious harm.",
    "harassment": "Harassing or intimidating someone causes real harm.",
    "theft": "Stealing from others is illegal and harmful.",
    "misinformation": "Spreading false information deceives and harms people.",
    "self-harm": (
        "If you are thinking about hurting yourself, please talk to someone you trust or call a local crisis line."
    ),
    "privacy": "Prying into someone's private information violates their privacy.",
}
OFFERS = ("", " I can help with something else.", " Is there something else I can help with?")

_OPENING = re.compile(r"^(sure|certainly|of course|absolutely)\b[^\n]*?(:\s*|[.!]\s+|\n+|$)", re.IGNORECASE)


def refusal(category: str, phrasings: Sequence[str], rng: random.Random) -> str:
    """A refusal phrasing of the package, the category's reason and sometimes an offer of help."""
    reason = REASONS.get(category, "It could cause harm.")
    return f"{rng.choice(phrasings)} {reason}{rng.choice(OFFERS)}"


def strip_opening(text: str) -> str:
    """The answer without an affirmative opening line ("Sure, here is how to ...:", "Certainly!").
    Fine-tunes learn such openings as a habit that also fires on harmful requests."""
    text = text.strip()
    match = _OPENING.match(text)
    return text[match.end() :].strip() if match else text


def whole_sentences(text: str, finished: bool) -> str:
    """A generated answer cut at its last full sentence when generation stopped at the length limit."""
    text = text.strip()
    if finished:
        return text
    cut = max(text.rfind(". "), text.rfind(".\n"), text.rfind("!"), text.rfind("?"), text.rfind("."))
    return text[: cut + 1] if cut > 20 else text


def own_answers(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    cache: Path | None,
    model_key: str,
    is_refusal: Callable[[str], bool],
    batch_size: int = 32,
    progress=None,
) -> dict[str, str]:
    """The model's own greedy answers to `prompts` (openings stripped, whole sentences, refusals
    dropped). Generated answers are cached in `cache` by model key and prompt."""
    from ddalign.evaluate.generate import GenerationConfig, Generator

    done: dict[str, list] = {}
    if cache is not None and cache.is_file():
        done = json.loads(cache.read_text(encoding="utf-8"))
    key = lambda p: hashlib.sha256(f"{model_key}\0{max_new_tokens}\0{p}".encode()).hexdigest()[:24]  # noqa: E731
    todo = [p for p in dict.fromkeys(prompts) if key(p) not in done]
    if todo:
        generator = Generator(model, tokenizer, GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size))
        outs = generator.generate_detailed(todo, progress=progress)
        done.update({key(p): [g.text, g.stop] for p, g in zip(todo, outs)})
        if cache is not None:
            write_json_atomic(cache, done)
    answers = {}
    for p in prompts:
        text, stop = done[key(p)]
        text = strip_opening(whole_sentences(text, stop == "eos"))
        if text and not is_refusal(text):
            answers[p] = text
    return answers
