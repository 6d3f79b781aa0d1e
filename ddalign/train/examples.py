"""Training examples rendered exactly as the evaluator renders prompts, labels on the answer only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ddalign.errors import DdalignError
from ddalign.evaluate.generate import GenerationConfig, Generator


@dataclass(frozen=True)
class Example:
    """One supervised example: the user's prompt and the answer the model should give."""

    prompt: str
    answer: str
    source: str = ""  # where it came from (a set name), for counts in build records
    # the answer ends the turn (the end-of-turn / EOS token follows it); False for an answer cut
    # at a length limit, so that training does not teach the model to stop mid-sentence
    end: bool = True
    # an answer the model should not give here (e.g. a refusal of a safe request): with the
    # fine-tune's `unlikelihood` weight > 0 its tokens are trained against (Welleck et al. 2019)
    rejected: str = ""


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    labels: list[int]  # -100 on the prompt's tokens
    rejected: "Encoded | None" = None  # the prompt and the rejected answer, labelled the same way


def encode_examples(
    model, tokenizer, examples: Iterable[Example], *, max_tokens: int, template: str | None = None
) -> tuple[list[Encoded], int]:
    """Token ids and labels per example, and how many were dropped: the prompt alone fills
    `max_tokens` (fewer than 4 answer tokens would be left), or the answer has no token to learn.

    The prompt is rendered by the evaluator's `Generator.render` (chat template, or the plain
    template) and tokenised as the evaluator tokenises it; the answer's tokens follow, ending with
    the end-of-turn / EOS the generator stops on. So training teaches exactly the continuation that
    generation will produce. Longer sequences keep their first `max_tokens` tokens (at most the
    model's context): the opening of an answer is what the judge reads."""
    if not isinstance(max_tokens, int) or max_tokens < 8:
        raise DdalignError(f"encode_examples max_tokens: expected an integer of at least 8, got {max_tokens!r}")
    generator = Generator(model, tokenizer, GenerationConfig(template=template, max_prompt_tokens=10**9))
    max_tokens = min(max_tokens, generator.context_length() or max_tokens)  # no position past the model's
    encoded: list[Encoded] = []
    dropped = 0
    for example in examples:
        prompt_ids = generator.encode_full(example.prompt)
        if len(prompt_ids) > max_tokens - 4:
            dropped += 1
            continue
        answer_ids = _answer_ids(tokenizer, generator, example)
        if not answer_ids:  # an empty answer cut at a length limit: nothing to learn
            dropped += 1
            continue
        rejected = None
        if example.rejected:
            # no end-of-turn: what is unlikely is the answer's words, not that an answer ends
            wrong = _answer_ids(tokenizer, generator, Example(example.prompt, example.rejected, end=False))
            if wrong:
                rejected = Encoded((prompt_ids + wrong)[:max_tokens], ([-100] * len(prompt_ids) + wrong)[:max_tokens])
        ids = (prompt_ids + answer_ids)[:max_tokens]
        labels = ([-100] * len(prompt_ids) + answer_ids)[:max_tokens]
        encoded.append(Encoded(ids, labels, rejected))
    return encoded, dropped


def _answer_ids(tokenizer, generator: Generator, example: Example) -> list[int]:
    """The answer's tokens as generation would produce them after the rendered prompt."""
    eos = _eos_id(tokenizer, generator)
    if not generator.uses_chat_template:
        ids = list(tokenizer(example.answer, add_special_tokens=False)["input_ids"])
        return ids + [eos] if example.end else ids
    messages = [{"role": "user", "content": example.prompt}]
    prompt_text = generator.render(example.prompt)
    full_text = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": example.answer}], tokenize=False
    )
    if not full_text.startswith(prompt_text):
        raise DdalignError(
            "chat template: the rendered prompt (add_generation_prompt) is not a prefix of the rendered "
            "conversation; this template cannot be trained on with answer-only labels (pass a plain --template)"
        )
    ids = list(tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"])
    # the template may add text after the end-of-turn token (a newline): generation stops at the token
    ends = [i for i, t in enumerate(ids) if t in generator.eos_ids]
    if ends:
        return ids[: ends[0] + 1] if example.end else ids[: ends[0]]
    # a template whose turn ends in no token the generator stops on: end the answer with one
    return ids + [eos] if example.end else ids


def _eos_id(tokenizer, generator: Generator) -> int:
    """The token that ends an answer: the tokenizer's EOS if generation stops on it, else one it stops on."""
    eos = tokenizer.eos_token_id
    if isinstance(eos, int) and (eos in generator.eos_ids or not generator.eos_ids):
        return eos
    if generator.eos_ids:
        return min(generator.eos_ids)
    raise DdalignError("tokenizer: no EOS token (nor a model eos_token_id), so a trained answer could not end")
