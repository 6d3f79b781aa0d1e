"""GGUF -> Hugging Face folder: dequantised safetensors weights, config, tokenizer, chat template,
generation config, so that every other part of ddalign reads a GGUF model as an ordinary checkpoint.

transformers reads GGUF itself (dequantising, undoing llama.cpp's Q/K permutation); it only refuses
to `save_pretrained` a model it loaded from GGUF. So the weights are loaded through transformers,
moved into a model rebuilt from the same config (without any quantization_config), and saved from
there into a temporary folder beside the output, synced and renamed into place.
"""

from __future__ import annotations

import copy
import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path

from ddalign.errors import DdalignError
from ddalign.io.atomic import atomic_folder

MAGIC = b"GGUF"
DTYPES = ("float32", "bfloat16")
INSTALL_HINT = "pip install gguf (or pip install 'ddalign[gguf]')"


@dataclass
class ConvertReport:
    out: Path
    architecture: str
    layers: int
    parameters: int
    dtype: str
    tied_embeddings: bool
    chat_template: bool


def check_gguf_file(path: Path) -> None:
    """A readable file starting with the GGUF magic, else a one-line error naming it."""
    if not path.is_file():
        raise DdalignError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise DdalignError(f"{path}: not a GGUF file (starts with {head!r}, expected {MAGIC!r})")


def require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise DdalignError(f"reading GGUF files needs the gguf package: {INSTALL_HINT}")


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value types
_STRING, _ARRAY = 8, 9


def gguf_architecture(path: Path) -> str:
    """`general.architecture` of a GGUF file, read from its key-value header alone (gguf's reader
    parses every field, the whole vocabulary included: half a minute for a 49k-token model)."""
    count_fmt = "Q"
    with open(path, "rb") as f:

        def unpack(fmt: str):
            raw = f.read(struct.calcsize(fmt))
            if len(raw) < struct.calcsize(fmt):
                raise DdalignError(f"{path}: truncated GGUF header")
            return struct.unpack(order + fmt, raw)[0]

        def skip(kind: int) -> None:
            if kind == _STRING:
                f.seek(unpack(count_fmt), 1)
            elif kind == _ARRAY:
                item, count = unpack("I"), unpack(count_fmt)
                if item in _SCALAR_SIZES:
                    f.seek(count * _SCALAR_SIZES[item], 1)
                else:
                    for _ in range(count):
                        skip(item)
            elif kind in _SCALAR_SIZES:
                f.seek(_SCALAR_SIZES[kind], 1)
            else:
                raise DdalignError(f"{path}: corrupt GGUF header (value type {kind})")

        f.seek(len(MAGIC))
        order = "<"
        version = unpack("I")
        if version > 0xFFFF:  # a big-endian file
            order = ">"
            version = struct.unpack(">I", struct.pack("<I", version))[0]
        count_fmt = "I" if version == 1 else "Q"
        unpack(count_fmt)  # tensor count
        for _ in range(unpack(count_fmt)):
            key = f.read(unpack(count_fmt)).decode("utf-8", errors="replace")
            kind = unpack("I")
            if key == "general.architecture" and kind == _STRING:
                return f.read(unpack(count_fmt)).decode("utf-8", errors="replace")
            skip(kind)
    raise DdalignError(f"{path}: GGUF file without general.architecture")


def supported_architectures() -> list[str]:
    """The GGUF architectures the installed transformers can read."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(GGUF_SUPPORTED_ARCHITECTURES)


def check_architecture(path: Path, architecture: str) -> None:
    supported = supported_architectures()
    # transformers reads some files under another name (llama files of Mistral models; t5 variants)
    if architecture not in supported and not any(architecture.startswith(s) for s in ("t5", "qwen2moe", "qwen3moe")):
        import transformers

        raise DdalignError(
            f"{path}: GGUF architecture {architecture!r} cannot be read by transformers "
            f"{transformers.__version__} (supported: {', '.join(supported)})"
        )


def convert_gguf(path, out, *, dtype: str = "float32", overwrite: bool = False) -> ConvertReport:
    """Write the GGUF model at `path` as a Hugging Face folder `out` (atomically)."""
    path, out = Path(path), Path(out)
    if dtype not in DTYPES:
        raise DdalignError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    check_gguf_file(path)
    if out.exists() and not overwrite:
        raise DdalignError(f"{out}: output folder exists; pass --overwrite to replace it")
    if out.resolve() == path.resolve() or path.resolve().is_relative_to(out.resolve()):
        raise DdalignError(f"{out}: the output would replace the input GGUF file")
    require_gguf()
    architecture = gguf_architecture(path)
    check_architecture(path, architecture)

    with atomic_folder(out) as tmp:
        report = _convert_into(path, tmp, dtype, architecture)
    report.out = out
    return report


def _convert_into(path: Path, folder: Path, dtype: str, architecture: str) -> ConvertReport:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    torch_dtype = getattr(torch, dtype)
    where, name = str(path.parent), path.name
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers' GGUF reader logs every unparsed key
    try:
        try:
            loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch_dtype)
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DdalignError(
                f"{path}: transformers could not load this GGUF model ({architecture}): {reason}"
            ) from None
        # A folder of dequantised weights: nothing of the GGUF quantisation belongs in its config.
        config = copy.deepcopy(loaded.config)
        for key in ("quantization_config", "_model_name_or_path"):
            if hasattr(config, key):
                delattr(config, key)
        config.dtype = torch_dtype
        # Built on the meta device (no random initialisation to pay for), then given the loaded tensors.
        with torch.device("meta"):
            fresh = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        state = loaded.state_dict()
        del loaded
        result = fresh.load_state_dict(state, strict=False, assign=True)
        tied = bool(getattr(fresh.config, "tie_word_embeddings", False))
        # a tied head is the embedding: transformers' GGUF load lists it, or not, either way
        missing = [k for k in result.missing_keys if not (tied and k.endswith("lm_head.weight"))]
        if missing or result.unexpected_keys:
            raise DdalignError(
                f"{path}: the GGUF weights do not fill the {architecture} model "
                f"(missing: {missing[:3]}, unexpected: {result.unexpected_keys[:3]})"
            )
        del state
        fresh.tie_weights()
        empty = [k for k, t in fresh.state_dict().items() if t.is_meta]
        if empty:
            raise DdalignError(f"{path}: the GGUF file holds no value for {empty[0]} ({len(empty)} tensors unset)")
        fresh.save_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        tokenizer.save_pretrained(folder)
    finally:
        hf_logging.set_verbosity(verbosity)
    return ConvertReport(
        out=folder,
        architecture=architecture,
        layers=int(getattr(fresh.config, "num_hidden_layers", 0) or 0),
        parameters=sum(p.numel() for p in fresh.parameters()),
        dtype=dtype,
        tied_embeddings=tied,
        chat_template=bool(getattr(tokenizer, "chat_template", None)),
    )
