"""Batched greedy generation with a KV cache and an exact per-row early stop.

(Over 500 lines: the loop, its KV-cache handling across transformers versions and the prompt
rules share the batch state; split, they would pass it back and forth.)

The oracle's cost is generation, so this module does three things plain `model.generate`
does not do together: it sorts prompts by length (little padding), drops a row from the batch
the moment it is finished (EOS, or its verdict is already decided by `stop_when`), and counts
the tokens it generated. Results equal plain greedy decoding up to the stopping point: the same
argmax, the same left padding and position ids as `model.generate(do_sample=False)`.

Prompt rendering: with `GenerationConfig.template` unset, the tokenizer's chat template
(`apply_chat_template(..., add_generation_prompt=True)`) when it has one, else
`DEFAULT_TEMPLATE`; `template="chat"` demands a chat template; any other string is a plain
template with a `{prompt}` field.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ddalign.errors import DdalignError

DEFAULT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
"""Plain (Alpaca-style) template used when the tokenizer has no chat template."""

StopWhen = Callable[[str], bool]


@dataclass
class GenerationConfig:
    """How to decode: greedy, at most `max_new_tokens` per prompt, `batch_size` rows at a time."""

    max_new_tokens: int = 64
    batch_size: int = 32
    template: str | None = None  # None: chat template if any, else DEFAULT_TEMPLATE
    device: str | None = None  # None: where the model already is
    dtype: str | None = None  # informative here; load_model applies it
    max_prompt_tokens: int | None = None  # None: the model's context minus max_new_tokens

    def __post_init__(self) -> None:
        if self.max_prompt_tokens is not None and (
            not isinstance(self.max_prompt_tokens, int) or self.max_prompt_tokens < 1
        ):
            raise DdalignError(
                f"generation max_prompt_tokens: expected a positive integer, got {self.max_prompt_tokens!r}"
            )
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise DdalignError(f"generation max_new_tokens: expected a positive integer, got {self.max_new_tokens!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise DdalignError(f"generation batch_size: expected a positive integer, got {self.batch_size!r}")
        if self.template is not None and self.template != "chat" and "{prompt}" not in self.template:
            raise DdalignError(
                f"generation template: expected 'chat' or a text with a {{prompt}} field, got {self.template!r}"
            )


@dataclass
class Generation:
    """One answer: its text, how many tokens were generated, and why decoding stopped."""

    text: str
    new_tokens: int
    stop: str  # "eos" | "stop_when" | "length"


@dataclass
class GenerationStats:
    """Cumulative cost of a Generator (for cost records)."""

    prompts: int = 0
    new_tokens: int = 0
    prompt_tokens: int = 0
    forward_passes: int = 0
    seconds: float = 0.0
    truncated_prompts: int = 0  # prompts cut to max_prompt_tokens (their last tokens kept)

    def as_dict(self) -> dict:
        return {
            "prompts": self.prompts,
            "generated_tokens": self.new_tokens,
            "truncated_prompts": self.truncated_prompts,
            "prompt_tokens": self.prompt_tokens,
            "forward_passes": self.forward_passes,
            "seconds": round(self.seconds, 4),
        }


# --- device, dtype, loading ------------------------------------------------------------------

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """'bf16' / 'bfloat16' / torch.bfloat16 -> torch.bfloat16; None and 'auto' stay None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key == "auto":
        return None
    if key not in _DTYPES:
        raise DdalignError(f"dtype: expected one of float32, bfloat16, float16, auto; got {dtype!r}")
    return _DTYPES[key]


def auto_device_dtype(device: str | None = None, dtype: str | torch.dtype | None = None) -> tuple[str, torch.dtype]:
    """CUDA + bf16 (fp16 where bf16 is missing) when a GPU is present, else CPU float32."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DdalignError(f"device: {device!r} requested but CUDA is not available")
    chosen = parse_dtype(dtype)
    if chosen is None:
        if device.startswith("cuda"):
            chosen = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            chosen = torch.float32
    return device, chosen


def _weight_files(folder: Path) -> tuple[list[Path], list[Path]]:
    safe = sorted(folder.glob("*.safetensors"))
    pickled = sorted(p for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth"})
    return safe, pickled


def check_model_folder(path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> Path:
    """The folder (or the Hub id's snapshot, see ddalign.io.hub), if it holds config.json and
    weights we may load (safetensors, or pickle when allowed)."""
    from ddalign.io.hub import resolve_model

    folder = resolve_model(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code).path
    if not folder.is_dir():
        raise DdalignError(f"{folder}: expected a model folder (config.json + weights), not found")
    if not (folder / "config.json").is_file():
        raise DdalignError(f"{folder}: no config.json; expected a Hugging Face model folder")
    safe, pickled = _weight_files(folder)
    if not safe and not pickled:
        raise DdalignError(f"{folder}: no *.safetensors weights found")
    if not safe and not allow_pickle:
        raise DdalignError(
            f"{folder}: only pickle weights ({pickled[0].name}); pass allow_pickle "
            "(--allow-pickle) to load them with weights_only=True"
        )
    return folder


def _needs_device_map(folder: Path, dtype: torch.dtype, device: str) -> bool:
    """True when the weights (at `dtype`) do not fit in one GPU: then accelerate spreads them."""
    if not device.startswith("cuda") or torch.cuda.device_count() < 1:
        return False
    safe, pickled = _weight_files(folder)
    stored = sum(p.stat().st_size for p in (safe or pickled))
    # Stored bytes are usually fp32 or bf16; scale roughly to the target dtype.
    scale = torch.finfo(dtype).bits / 16 if dtype.is_floating_point else 1.0
    index = 0 if device == "cuda" else int(device.split(":")[1])
    free = torch.cuda.get_device_properties(index).total_memory * 0.85
    return stored * scale > free


def load_model(
    path,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """Load a causal-LM folder (or Hub id) once, for evaluation: (model in eval mode, tokenizer).

    Safetensors only unless `allow_pickle` (pickle can run code). Device and dtype are chosen
    automatically (see `auto_device_dtype`); a model bigger than one GPU gets
    `device_map="auto"` (accelerate) unless `device_map` says otherwise.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = check_model_folder(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    safe, _ = _weight_files(folder)
    device, torch_dtype = auto_device_dtype(device, dtype)
    if device_map is None and _needs_device_map(folder, torch_dtype, device):
        device_map = "auto"
    kwargs = dict(dtype_argument(torch_dtype), trust_remote_code=trust_remote_code, use_safetensors=bool(safe))
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise DdalignError(f"{folder}: cannot load as a causal LM ({str(exc).splitlines()[0]})") from exc
    if device_map is None:
        model.to(device)
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DdalignError(f"{folder}: no usable tokenizer ({str(exc).splitlines()[0]})") from exc
    return model, tokenizer


# --- the generator ---------------------------------------------------------------------------


class Generator:
    """Greedy, batched, cached decoding over one loaded model (load once, generate many times)."""

    def __init__(self, model, tokenizer, config: GenerationConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or GenerationConfig()
        if self.config.template == "chat" and not getattr(tokenizer, "chat_template", None):
            raise DdalignError("generation template: 'chat' requested but the tokenizer has no chat template")
        self.stats = GenerationStats()
        self.eos_ids = self._eos_ids()
        self.pad_id = self._pad_id()
        params = inspect.signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in params
        self._cache_arg = _cache_argument(params)
        if self.config.device is not None and getattr(model, "hf_device_map", None) is None:
            model.to(self.config.device)
        self.max_prompt_tokens = self._max_prompt_tokens()

    # rendering ------------------------------------------------------------------------------
    @property
    def uses_chat_template(self) -> bool:
        return self.config.template in (None, "chat") and bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, prompt: str) -> str:
        """The text fed to the model for one user prompt (chat template or plain template)."""
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        template = self.config.template if self.config.template not in (None, "chat") else DEFAULT_TEMPLATE
        return template.replace("{prompt}", prompt)

    def encode(self, prompt: str) -> list[int]:
        """Token ids of the rendered prompt; a chat template carries its own BOS. A prompt longer
        than `max_prompt_tokens` keeps its last tokens (the end of the request and the assistant
        turn), after its BOS when it starts with one."""
        return self._truncate(self.encode_full(prompt))

    def _truncate(self, ids: list[int]) -> list[int]:
        limit = self.max_prompt_tokens
        if limit is None or len(ids) <= limit:
            return ids
        bos = getattr(self.tokenizer, "bos_token_id", None)
        head = ids[:1] if bos is not None and ids[0] == bos and limit > 1 else []
        return head + ids[len(ids) - (limit - len(head)) :]

    def encode_full(self, prompt: str) -> list[int]:
        text = self.render(prompt)
        ids = self.tokenizer(text, add_special_tokens=not self.uses_chat_template)["input_ids"]
        if not ids:
            raise DdalignError(f"prompt {prompt[:40]!r}: renders to no tokens")
        return list(ids)

    def context_length(self) -> int | None:
        """The model's context (positions it was built for), if its config says."""
        config = getattr(self.model, "config", None)
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def _max_prompt_tokens(self) -> int | None:
        if self.config.max_prompt_tokens is not None:
            return self.config.max_prompt_tokens
        context = self.context_length()
        if context is None:
            return None
        if context <= self.config.max_new_tokens:
            raise DdalignError(
                f"generation max_new_tokens {self.config.max_new_tokens}: leaves no room for a prompt "
                f"in the model's context of {context} tokens"
            )
        return context - self.config.max_new_tokens

    def describe(self) -> dict:
        """Settings for records: enough to reproduce the answers."""
        return {
            "decoding": "greedy",
            "max_new_tokens": self.config.max_new_tokens,
            "batch_size": self.config.batch_size,
            "max_prompt_tokens": self.max_prompt_tokens,
            "template": "chat" if self.uses_chat_template else (self.config.template or DEFAULT_TEMPLATE),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "eos_token_ids": sorted(self.eos_ids),
        }

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # decoding ---------------------------------------------------------------------------------
    def generate(
        self, prompts: Sequence[str], *, stop_when: StopWhen | Sequence[StopWhen | None] | None = None
    ) -> list[str]:
        """Answers in input order (plain text, special tokens removed)."""
        return [g.text for g in self.generate_detailed(prompts, stop_when=stop_when)]

    def generate_detailed(
        self,
        prompts: Sequence[str],
        *,
        stop_when: StopWhen | Sequence[StopWhen | None] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Generation]:
        """Like `generate`, with token counts and stop reasons; `progress(n)` after each batch."""
        results: list[Generation | None] = [None] * len(prompts)
        for indices, batch in self.iter_batches(prompts, stop_when=stop_when):
            for i, g in zip(indices, batch):
                results[i] = g
            if progress is not None:
                progress(len(indices))
        return results  # type: ignore[return-value]

    def iter_batches(
        self,
        prompts: Sequence[str],
        *,
        stop_when: StopWhen | Sequence[StopWhen | None] | None = None,
        order: Sequence[int] | None = None,
    ) -> Iterator[tuple[list[int], list[Generation]]]:
        """Yield (input indices, generations) batch by batch, longest prompts first.

        A caller that can stop early (the oracle, once its verdict is known) simply stops
        iterating: no further batch is computed. `order` restricts and orders the prompts to
        visit (by input index); batches are still formed by length inside it.
        """
        prompts = list(prompts)
        if isinstance(stop_when, (list, tuple)):
            if len(stop_when) != len(prompts):
                raise DdalignError(f"stop_when: expected one entry per prompt ({len(prompts)}), got {len(stop_when)}")
            per_row = list(stop_when)
        else:
            per_row = [stop_when] * len(prompts)
        visit = list(range(len(prompts))) if order is None else list(order)
        full = {i: self.encode_full(prompts[i]) for i in visit}
        encoded = {i: self._truncate(ids) for i, ids in full.items()}
        self.stats.truncated_prompts += sum(1 for i in visit if len(encoded[i]) < len(full[i]))
        # Longest first (stable): similar lengths share a batch, and memory peaks at once.
        visit.sort(key=lambda i: -len(encoded[i]))
        size = self.config.batch_size
        for start in range(0, len(visit), size):
            indices = visit[start : start + size]
            gens = self._decode_batch([encoded[i] for i in indices], [per_row[i] for i in indices])
            yield indices, gens

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (
            getattr(self.model, "generation_config", None),
            getattr(self.model, "config", None),
            self.tokenizer,
        ):
            value = getattr(source, "eos_token_id", None) if source is not None else None
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    def _pad_id(self) -> int:
        for value in (getattr(self.tokenizer, "pad_token_id", None), *sorted(self.eos_ids), 0):
            if isinstance(value, int):
                return value
        return 0

    @torch.inference_mode()
    def _decode_batch(self, rows: list[list[int]], stops: list[StopWhen | None]) -> list[Generation]:
        from transformers import DynamicCache

        started = time.perf_counter()
        n = len(rows)
        width = max(len(r) for r in rows)
        device = self.device
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for b, r in enumerate(rows):  # left padding
            ids[b, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[b, width - len(r) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        # As model.generate does: positions count real tokens only; pads get position 1.
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)

        cache = _new_cache(DynamicCache, self.model)
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
        out_tokens: list[list[int]] = [[] for _ in range(n)]
        stop_reason = ["length"] * n
        active = list(range(n))  # row -> original batch index
        eos = torch.tensor(sorted(self.eos_ids) or [-1], device=device)
        step_input, step_pos = ids, positions
        passes = 0
        for step in range(self.config.max_new_tokens):
            out = self.model(
                input_ids=step_input,
                attention_mask=mask,
                position_ids=step_pos,
                use_cache=True,
                **{self._cache_arg: cache},
                **extra,
            )
            passes += 1
            cache = getattr(out, self._cache_arg)
            next_tokens = out.logits[:, -1, :].argmax(-1)
            is_eos = torch.isin(next_tokens, eos).tolist()
            tokens = next_tokens.tolist()
            keep: list[int] = []
            for row, b in enumerate(active):
                if is_eos[row]:
                    stop_reason[b] = "eos"
                    continue
                out_tokens[b].append(tokens[row])
                check = stops[b]
                if check is not None and check(self._text(out_tokens[b])):
                    stop_reason[b] = "stop_when"
                    continue
                keep.append(row)
            if not keep or step == self.config.max_new_tokens - 1:
                break
            if len(keep) < len(active):  # drop finished rows from the batch
                index = torch.tensor(keep, device=device)
                cache = _select_rows(cache, index)
                mask = mask[index]
                next_tokens = next_tokens[index]
                step_pos = step_pos[index]
                active = [active[r] for r in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            step_input = next_tokens.unsqueeze(1)
            step_pos = step_pos[:, -1:] + 1
        gens = [
            Generation(self._text(toks), len(toks) + (reason == "eos"), reason)
            for toks, reason in zip(out_tokens, stop_reason)
        ]
        self.stats.prompts += n
        self.stats.new_tokens += sum(g.new_tokens for g in gens)
        self.stats.prompt_tokens += sum(len(r) for r in rows)
        self.stats.forward_passes += passes
        self.stats.seconds += time.perf_counter() - started
        return gens

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def dtype_argument(dtype) -> dict:
    """`from_pretrained`'s dtype keyword: `dtype` where configs know it (4.57, 5.x), else `torch_dtype` (4.45)."""
    from transformers import PretrainedConfig

    return {"dtype" if hasattr(PretrainedConfig(), "dtype") else "torch_dtype": dtype}


# transformers renamed the KV cache argument and output field `past_key_values` -> `cache` in 5.x
# (5.24 still accepts the old name with a deprecation warning; 5.40 drops it). Both are detected
# from what the installed version offers, not from its version number.


def _cache_argument(params) -> str:
    """The name of the forward argument (and output field) that carries the KV cache."""
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    try:  # a wrapped forward (*args, **kwargs): go by the library's output class
        from transformers.modeling_outputs import CausalLMOutputWithPast

        return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
    except (ImportError, AttributeError):
        return "past_key_values"


def _new_cache(cache_class, model):
    """An empty DynamicCache, built from the config (its layer types: sliding windows) where it takes one (4.57, 5.x).

    None for a model that still keeps its cache as tuples (GPT-2 in 4.45, `_supports_cache_class`
    False): it builds them itself from the first step.
    """
    if not getattr(model, "_supports_cache_class", True):
        return None
    if "config" in inspect.signature(cache_class.__init__).parameters:
        return cache_class(config=model.config)
    return cache_class()


def _select_rows(cache, index: torch.Tensor):
    """The cache restricted to the batch rows `index` (a Cache object in place, or legacy tuples)."""
    if isinstance(cache, tuple):
        return tuple(tuple(t.index_select(0, index) for t in layer) for layer in cache)
    cache.batch_select_indices(index)
    return cache
