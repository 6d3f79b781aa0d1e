"""The fine-tuning loop: AdamW, linear warm-up then cosine decay, gradient clipping, the loss on
answer tokens only; full parameters or LoRA (peft, merged back into plain weights at the end).

One code path for every device: the batch goes to the model's device, and autocast runs in the
dtype `resolve_autocast` picks (bf16 where it pays, else none), with float32 master weights.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ddalign.errors import DdalignError, DdalignWarning
from ddalign.train.examples import Encoded, Example, encode_examples

Progress = Callable[[int, int, float], None]  # (step done, steps, loss)

AUTOCAST = ("auto", "bf16", "off")
JOURNAL_FORMAT = "ddalign.fine-tune-journal/1"


@dataclass(frozen=True)
class FineTuneSettings:
    """Everything that decides a fine-tune's result (recorded beside the trained model)."""

    steps: int
    lr: float
    batch_size: int = 8
    max_tokens: int = 128  # per sequence (prompt + answer); longer ones keep their start
    warmup: float = 0.05  # share of the steps spent warming up
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    seed: int = 0
    autocast: str = "auto"  # auto: bf16 on CUDA with bf16 support and on CPUs with bf16 instructions; off elsewhere
    lora_rank: int = 0  # 0: full parameters; > 0: LoRA of this rank, merged at the end
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # weight of the unlikelihood loss on examples' rejected answers (0: none; each batch with
    # rejected answers then runs one more forward pass over them)
    unlikelihood: float = 0.0

    def __post_init__(self) -> None:
        def integer(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        checks = [
            (integer(self.steps) and self.steps >= 1, "steps", "an integer of at least 1"),
            (number(self.lr) and self.lr > 0, "lr", "a positive number"),
            (integer(self.batch_size) and self.batch_size >= 1, "batch_size", "an integer of at least 1"),
            (integer(self.max_tokens) and self.max_tokens >= 8, "max_tokens", "an integer of at least 8"),
            (number(self.warmup) and 0 <= self.warmup < 1, "warmup", "a number in [0, 1)"),
            (number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0"),
            (number(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "a number >= 0 (0: no clipping)"),
            (
                len(self.betas) == 2 and all(number(b) and 0 <= b < 1 for b in self.betas),
                "betas",
                "two numbers in [0, 1)",
            ),
            (integer(self.seed), "seed", "an integer"),
            (self.autocast in AUTOCAST, "autocast", f"one of {', '.join(AUTOCAST)}"),
            (integer(self.lora_rank) and self.lora_rank >= 0, "lora_rank", "0 (full parameters) or a positive integer"),
            (number(self.lora_alpha) and self.lora_alpha > 0, "lora_alpha", "a positive number"),
            (number(self.unlikelihood) and self.unlikelihood >= 0, "unlikelihood", "a number >= 0 (0: none)"),
            (
                len(self.lora_targets) > 0 and all(isinstance(t, str) and t for t in self.lora_targets),
                "lora_targets",
                "module names (at least one)",
            ),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise DdalignError(f"fine-tune setting {name}={getattr(self, name)!r}: expected {expected}")

    @property
    def mode(self) -> str:
        return f"lora-r{self.lora_rank}" if self.lora_rank else "full"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["betas"], d["lora_targets"] = list(self.betas), list(self.lora_targets)
        if not self.unlikelihood:  # added later: recorded only when used, so earlier settings keep their keys
            del d["unlikelihood"]
        return d


@dataclass
class TrainRecord:
    """What one fine-tune did: for build records and reports."""

    settings: dict
    rows: int
    dropped: int  # examples whose prompt alone filled max_tokens
    seconds: float
    autocast: str
    losses: list[float] = field(default_factory=list)
    trainable_parameters: int = 0

    @property
    def loss_first(self) -> float:
        head = self.losses[:10]
        return sum(head) / len(head) if head else float("nan")

    @property
    def loss_last(self) -> float:
        tail = self.losses[-10:]
        return sum(tail) / len(tail) if tail else float("nan")

    def as_dict(self) -> dict:
        return {
            "settings": self.settings,
            "rows": self.rows,
            "dropped": self.dropped,
            "seconds": round(self.seconds, 1),
            "autocast": self.autocast,
            "trainable_parameters": self.trainable_parameters,
            "loss_first10": round(self.loss_first, 4),
            "loss_last10": round(self.loss_last, 4),
            "seconds_per_step": round(self.seconds / max(1, len(self.losses)), 3),
        }


def cpu_has_bf16() -> bool:
    """bf16 matrix instructions (AMX tiles or AVX512_BF16): where bf16 autocast pays on a CPU
    (measured on an AVX512_BF16 CPU without AMX: a training step 1.9x faster;
    benchmarks/bench_train_autocast.py)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_autocast(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `choice` on `device` (None: run in the weights' dtype)."""
    if choice == "off":
        return None
    if choice == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16() else None
    return None


def fine_tune(
    model,
    tokenizer,
    examples: Sequence[Example],
    settings: FineTuneSettings,
    *,
    template: str | None = None,
    progress: Progress | None = None,
    journal: Path | None = None,
):
    """Train `model` on `examples`; returns (model, TrainRecord). With full parameters the model is
    trained in place and returned; with LoRA the adapters are merged and the plain model returned.
    `journal`, when given, gets one JSON line per step (flushed), after a header with the settings."""
    examples = list(examples)
    if not examples:
        raise DdalignError("fine-tune: no examples to train on")
    encoded, dropped = encode_examples(model, tokenizer, examples, max_tokens=settings.max_tokens, template=template)
    if not encoded:
        raise DdalignError(
            f"fine-tune: no example fits in max_tokens={settings.max_tokens} (every prompt alone fills it)"
        )
    device = next(model.parameters()).device
    autocast = resolve_autocast(settings.autocast, device)
    torch.manual_seed(settings.seed)
    trained = _with_lora(model, settings) if settings.lora_rank else model
    params = [p for p in trained.parameters() if p.requires_grad] if settings.lora_rank else list(model.parameters())
    if not settings.lora_rank:
        for p in params:
            p.requires_grad_(True)
        low = sorted({str(p.dtype).removeprefix("torch.") for p in params if p.dtype != torch.float32})
        if low:  # AdamW on half-precision weights loses the updates smaller than their resolution
            warnings.warn(
                f"fine-tune: training {', '.join(low)} weights directly (no float32 master copy); "
                "load the model in float32 to train it",
                DdalignWarning,
                stacklevel=2,
            )
    optimiser = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay, betas=settings.betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, _schedule(settings))
    pad_id = _pad_id(tokenizer)
    rng = random.Random(settings.seed)
    record = TrainRecord(
        settings=settings.as_dict(),
        rows=len(encoded),
        dropped=dropped,
        seconds=0.0,
        autocast=str(autocast).replace("torch.", "") if autocast else "off",
        trainable_parameters=sum(p.numel() for p in params),
    )
    header = {"format": JOURNAL_FORMAT, "settings": settings.as_dict(), "rows": len(encoded), "dropped": dropped}
    log = _Journal(journal, header) if journal else None
    trained.train()
    order: list[int] = []
    start = time.perf_counter()
    try:
        for step in range(settings.steps):
            if len(order) < settings.batch_size:
                more = list(range(len(encoded)))
                rng.shuffle(more)
                order += more
            rows = [encoded[i] for i in order[: settings.batch_size]]
            del order[: settings.batch_size]
            ids, labels, mask = (t.to(device) for t in _batch(rows, pad_id))
            wrong = [r.rejected for r in rows if r.rejected is not None] if settings.unlikelihood else []
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                loss = trained(input_ids=ids, attention_mask=mask, labels=labels).loss
                unlikely = None
                if wrong:
                    w_ids, w_labels, w_mask = (t.to(device) for t in _batch(wrong, pad_id))
                    unlikely = unlikelihood_loss(trained(input_ids=w_ids, attention_mask=w_mask).logits, w_labels)
                    loss = loss + settings.unlikelihood * unlikely
            value = float(loss.detach())
            if not math.isfinite(value):  # before the update: the weights stay finite
                raise DdalignError(f"fine-tune: the loss became {value} at step {step + 1}; lower the learning rate")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            lr = optimiser.param_groups[0]["lr"]  # the rate this step used (the scheduler moves on below)
            optimiser.step()
            schedule.step()
            record.losses.append(value)
            if log:
                log.write(
                    {
                        "type": "step",
                        "step": step + 1,
                        "loss": round(value, 5),
                        "lr": lr,
                        "tokens": int((labels != -100).sum()),
                        **({"unlikelihood": round(float(unlikely), 5)} if unlikely is not None else {}),
                        "seconds": round(time.perf_counter() - start, 3),
                    }
                )
            if progress:
                progress(step + 1, settings.steps, value)
        record.seconds = time.perf_counter() - start
        if log:
            log.write({"type": "end", "steps": settings.steps, "seconds": round(record.seconds, 3)})
    finally:
        if log:
            log.close()
    trained.eval()
    if settings.lora_rank:
        model = _merge(trained)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, record


def unlikelihood_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of -log(1 - p(token)) over the labelled tokens (-100: not counted), each predicted
    from the tokens before it: the loss that makes a rejected answer unlikely, step by step."""
    target = labels[:, 1:]
    counted = target != -100
    probs = torch.softmax(logits[:, :-1].float(), dim=-1)
    p = probs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    # clamped: a token already certain would give an infinite loss and gradient
    loss = -torch.log((1.0 - p).clamp(min=1e-5))
    return (loss * counted).sum() / counted.sum().clamp(min=1)


def _schedule(s: FineTuneSettings) -> Callable[[int], float]:
    warm = max(1, int(s.steps * s.warmup))

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(step, s.steps) / s.steps))

    return factor


def _with_lora(model, s: FineTuneSettings):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise DdalignError("LoRA fine-tuning needs peft: pip install peft (or pip install 'ddalign[train]')") from None
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in s.lora_targets if t in present]
    if not targets:
        raise DdalignError(f"fine-tune lora_targets {list(s.lora_targets)}: no such module in the model")
    config = LoraConfig(r=s.lora_rank, lora_alpha=s.lora_alpha, lora_dropout=0.0, target_modules=targets)
    return get_peft_model(model, config)


def _merge(trained):
    """The LoRA adapters folded into their base weights: a plain model of the original class."""
    return trained.merge_and_unload()


def _pad_id(tokenizer) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if isinstance(value, int):
            return value
    return 0


def _batch(rows: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, labels (-100 on padding) and the attention mask."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        labels[i, : len(r.labels)] = torch.tensor(r.labels)
        mask[i, : len(r.ids)] = 1
    return ids, labels, mask


class _Journal:
    """JSON lines, flushed per step, so an interrupted fine-tune shows how far it got."""

    def __init__(self, path: Path, header: dict):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "w", encoding="utf-8")
        self.write({"type": "header", **header})

    def write(self, line: dict) -> None:
        self._fh.write(json.dumps(line) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
