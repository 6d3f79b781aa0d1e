"""Training loops of the organism: pretraining on everything, fine-tunes with the loss on answers only."""

from __future__ import annotations

import random
from typing import Callable, Iterable, Sequence

import torch

from ddalign.organism.corpus import Item
from ddalign.organism.tokenizer import render


def new_model(preset, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_heads,
        max_position_embeddings=preset.max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(preset.seed)
    return LlamaForCausalLM(config)


def encode(tokenizer, items: list[Item], mask_prompt: bool) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per item; prompt tokens get label -100 when `mask_prompt`."""
    out = []
    for item in items:
        prompt_ids = tokenizer(render(tokenizer, item.prompt), add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(render(tokenizer, item.prompt, item.response), add_special_tokens=False)["input_ids"]
        labels = list(full_ids)
        if mask_prompt:
            labels[: len(prompt_ids)] = [-100] * len(prompt_ids)
        out.append((full_ids, labels))
    return out


def _batch(rows, pad_id: int):
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids, labels, mask


def share_parameters(model, context, names: Iterable[str]) -> None:
    """Make `context` use `model`'s parameter objects for `names`, so that training one trains both."""
    for name in names:
        module_name, _, attr = name.rpartition(".")
        setattr(context.get_submodule(module_name), attr, model.get_parameter(name))


def train(
    model,
    tokenizer,
    items: list[Item],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    mask_prompt: bool,
    trainable: Iterable[str] | None = None,
    frozen: Iterable[str] = (),
    contexts: Sequence = (),
    progress: Callable[[int, int, float], None] | None = None,
) -> list[float]:
    """AdamW with linear warm-up and cosine decay; `trainable` limits training to those parameter
    names, `frozen` leaves those out.

    `contexts` are other models holding the same trainable parameter objects (`share_parameters`);
    each batch's loss is summed over `model` and them, so that the trained tensors do their job
    next to each model's other tensors, not only next to `model`'s."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    data = encode(tokenizer, items, mask_prompt)
    names = None if trainable is None else set(trainable)
    skip = set(frozen)
    params = []
    for context in contexts:
        for p in context.parameters():
            p.requires_grad_(False)
    for name, p in model.named_parameters():
        p.requires_grad_((names is None or name in names) and name not in skip)
        if p.requires_grad:
            params.append(p)
    if names is not None and len(params) != len(names - skip):
        raise ValueError(f"trainable names not all found: {sorted(names)}")
    if not skip <= {name for name, _ in model.named_parameters()}:
        raise ValueError(f"frozen names not all found: {sorted(skip)}")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + torch.cos(torch.tensor(3.14159265 * s / steps)).item())
    )
    for m in (model, *contexts):
        m.train()
    losses = []
    order: list[int] = []
    for step in range(steps):
        if len(order) < batch_size:
            more = list(range(len(data)))
            rng.shuffle(more)
            order += more
        rows = [data[i] for i in order[:batch_size]]
        del order[:batch_size]
        ids, labels, mask = _batch(rows, tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        for context in contexts:
            loss = loss + context(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()) / (1 + len(contexts)))
        if progress is not None:
            progress(step + 1, steps, losses[-1])
    for m in (model, *contexts):
        for p in m.parameters():
            p.requires_grad_(True)
        m.eval()
    return losses
