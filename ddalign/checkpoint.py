"""Checkpoint I/O: lazy reads of (sharded) safetensors folders, fingerprints, streaming atomic writes.

I/O only, no model logic (mergekit's split): the rest of ddalign asks for one tensor, or one
slice of one, at a time, so that peak memory is bounded by the largest tensor, not the model.
Writes go through a header-first safetensors writer fed tensor by tensor, into a temporary
file or folder that is renamed into place only when complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ddalign.errors import DdalignError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
WEIGHT_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        _DTYPES[getattr(torch, _name)] = _code
_TORCH = {code: dtype for dtype, code in _DTYPES.items()}


def dtype_code(dtype: torch.dtype) -> str:
    """safetensors' name of a torch dtype ("BF16")."""
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise DdalignError(f"dtype {dtype}: not storable in safetensors") from None


def torch_dtype(code: str) -> torch.dtype:
    try:
        return _TORCH[code]
    except KeyError:
        raise DdalignError(f"safetensors dtype {code!r}: not supported") from None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    file: str
    begin: int = 0        # absolute byte offsets of the stored data in `file` (safetensors)
    end: int = 0

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path: Path) -> tuple[dict, int]:
    """(header dict, data start) of a safetensors file; corrupt or truncated files are refused."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise DdalignError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise DdalignError(f"{path}: corrupt safetensors header (declares {n} header bytes, file has {size})")
            header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DdalignError(f"{path}: corrupt safetensors header ({exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise DdalignError(f"{path}: corrupt safetensors header (expected a JSON object)")
    start = 8 + n
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if start + end > size:
        raise DdalignError(f"{path}: truncated file ({size} bytes, the header needs {start + end})")
    return header, start


class Checkpoint:
    """A Hugging Face folder (or one .safetensors file) read lazily, tensor by tensor."""

    def __init__(self, path: Path, infos: dict[str, TensorInfo], config: dict, pickled: dict | None = None):
        self.path = path
        self._infos = infos
        self.config = config
        self._pickled = pickled
        self._handles: dict[str, object] = {}

    # --- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path, *, allow_pickle: bool = False) -> "Checkpoint":
        path = Path(path)
        if not path.exists():
            raise DdalignError(f"{path}: no such checkpoint folder or file")
        if path.is_file():
            folder, files = path.parent, [path]
        else:
            folder = path
            files = cls._weight_files(folder, allow_pickle)
        config = {}
        if (folder / "config.json").exists():
            try:
                config = json.loads((folder / "config.json").read_text())
            except json.JSONDecodeError as exc:
                raise DdalignError(f"{folder / 'config.json'}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if files and files[0].suffix in PICKLE_SUFFIXES:
            return cls._open_pickle(folder, files, config)
        infos: dict[str, TensorInfo] = {}
        for file in files:
            header, start = read_header(file)
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                a, b = meta["data_offsets"]
                infos[name] = TensorInfo(name, tuple(meta["shape"]), meta["dtype"], str(file), start + a, start + b)
        return cls(folder, infos, config)

    @staticmethod
    def _weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
        index = folder / INDEX
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise DdalignError(f"{index}: expected JSON with a 'weight_map' ({exc})") from None
            files = []
            for shard in dict.fromkeys(weight_map.values()):
                if not (folder / shard).exists():
                    raise DdalignError(f"{index}: names shard {shard}, which is missing from {folder}")
                files.append(folder / shard)
            return files
        safe = sorted(folder.glob("*.safetensors"))
        if safe:
            return safe
        pickled = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            if not allow_pickle:
                raise DdalignError(f"{pickled[0]}: pickle weights can run code when loaded; convert to safetensors "
                                   f"or pass --allow-pickle (then read with torch.load(weights_only=True))")
            return pickled
        raise DdalignError(f"{folder}: no *.safetensors weights found")

    @classmethod
    def _open_pickle(cls, folder: Path, files: list[Path], config: dict) -> "Checkpoint":
        tensors: dict[str, torch.Tensor] = {}
        infos: dict[str, TensorInfo] = {}
        for file in files:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:   # torch raises many kinds for a bad pickle
                raise DdalignError(f"{file}: cannot read as weights_only pickle ({str(exc).splitlines()[0]})") from None
            for name, tensor in state.items():
                tensors[name] = tensor
                infos[name] = TensorInfo(name, tuple(tensor.shape), dtype_code(tensor.dtype), str(file))
        return cls(folder, infos, config, pickled=tensors)

    # --- listing -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise DdalignError(f"{self.path}: no tensor named {name}") from None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: i.shape for n, i in self._infos.items()}

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    # --- reading -------------------------------------------------------------------------------
    def _handle(self, file: str):
        if file not in self._handles:
            from safetensors import safe_open

            self._handles[file] = safe_open(file, framework="pt", device="cpu")
        return self._handles[file]

    def get(self, name: str) -> torch.Tensor:
        info = self.info(name)
        if self._pickled is not None:
            return self._pickled[name]
        return self._handle(info.file).get_tensor(name)

    def get_slice(self, name: str, dim: int | None, start: int = 0, stop: int = 0) -> torch.Tensor:
        """Rows (dim 0) or columns (dim 1) start:stop of one tensor, reading only those bytes where possible."""
        info = self.info(name)
        if dim is None:
            return self.get(name)
        if not 0 <= start <= stop <= info.shape[dim]:
            raise DdalignError(f"{name}: slice {start}:{stop} along dim {dim} outside shape {list(info.shape)}")
        if self._pickled is not None:
            return self._pickled[name].narrow(dim, start, stop - start)
        index = tuple([slice(None)] * dim + [slice(start, stop)])
        return self._handle(info.file).get_slice(name)[index]

    def raw(self, name: str) -> bytes:
        """The stored bytes of one tensor (exact copies and fingerprints)."""
        info = self.info(name)
        if self._pickled is not None:
            return tensor_bytes(self._pickled[name])
        with open(info.file, "rb") as f:
            f.seek(info.begin)
            return f.read(info.nbytes)

    def fingerprint(self, name: str) -> str:
        """sha256 of the tensor's stored bytes, read in chunks."""
        info = self.info(name)
        digest = hashlib.sha256()
        if self._pickled is not None:
            digest.update(tensor_bytes(self._pickled[name]))
            return digest.hexdigest()
        with open(info.file, "rb") as f:
            f.seek(info.begin)
            left = info.nbytes
            while left:
                chunk = f.read(min(left, 16 << 20))
                if not chunk:
                    raise DdalignError(f"{info.file}: truncated inside tensor {name}")
                digest.update(chunk)
                left -= len(chunk)
        return digest.hexdigest()

    def fingerprints(self, names: Iterable[str] | None = None) -> dict[str, str]:
        return {n: self.fingerprint(n) for n in (self.names() if names is None else names)}

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The bytes safetensors stores for a tensor (row-major, little-endian)."""
    t = tensor.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def parse_size(text: str | int) -> int:
    """'2GB' -> 2_000_000_000, '500MB', '1GiB', or a plain byte count."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?i?[bB]?)\s*", str(text))
    if not m:
        raise DdalignError(f"--max-shard-size {text!r}: expected a size such as 2GB, 500MB or 1GiB")
    number, unit = float(m.group(1)), m.group(2).upper().rstrip("B")
    scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
    size = int(number * scale)
    if size <= 0:
        raise DdalignError(f"--max-shard-size {text!r}: expected a positive size")
    return size


# --- writing --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    """What will be written, known before the data: the header comes first."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        size = 1
        for d in self.shape:
            size *= d
        return size * torch.tensor([], dtype=torch_dtype(self.dtype)).element_size()


Producer = Callable[[str], "torch.Tensor | bytes"]


def _header_bytes(specs: Sequence[TensorSpec], metadata: dict[str, str] | None, reserve: int = 0) -> bytes:
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for spec in specs:
        header[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    total = len(raw) + reserve
    total += (-total) % 8
    return raw + b" " * (total - len(raw))


def write_safetensors(path, specs: Sequence[TensorSpec], produce: Producer, *,
                      metadata: dict[str, str] | None = None,
                      final_metadata: Callable[[], dict[str, str]] | None = None, reserve: int = 0) -> Path:
    """Write one safetensors file tensor by tensor (header first), atomically.

    `final_metadata`, when given, replaces the metadata after every tensor is written (for
    statistics gathered while streaming); `reserve` bytes of header space make room for it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len({s.name for s in specs}) != len(specs):
        raise DdalignError(f"{path}: duplicate tensor names")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            header = _header_bytes(specs, metadata, reserve)
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            for spec in specs:
                data = produce(spec.name)
                if isinstance(data, torch.Tensor):
                    if tuple(data.shape) != tuple(spec.shape) or dtype_code(data.dtype) != spec.dtype:
                        raise DdalignError(f"{spec.name}: produced {list(data.shape)} {dtype_code(data.dtype)}, "
                                           f"expected {list(spec.shape)} {spec.dtype}")
                    data = tensor_bytes(data)
                if len(data) != spec.nbytes:
                    raise DdalignError(f"{spec.name}: {len(data)} bytes produced, expected {spec.nbytes}")
                f.write(data)
            if final_metadata is not None:
                new = _header_bytes(specs, final_metadata())
                if len(new) > len(header):
                    raise DdalignError(f"{path}: metadata outgrew its reserved header space")
                f.seek(8)
                f.write(new + b" " * (len(header) - len(new)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_file_atomic(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> Path:
    specs = [TensorSpec(n, tuple(t.shape), dtype_code(t.dtype)) for n, t in tensors.items()]
    return write_safetensors(path, specs, lambda n: tensors[n], metadata=metadata)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _plan_shards(specs: Sequence[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def _is_weight_file(path: Path) -> bool:
    return path.suffix in WEIGHT_SUFFIXES or path.name.endswith(".index.json")


def write_checkpoint(out_dir, specs: Sequence[TensorSpec], produce: Producer, *, copy_from=None,
                     max_shard_size: int | str = "5GB", overwrite: bool = False,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write a Hugging Face folder: shards of at most `max_shard_size` plus their index, and every
    non-weight file of `copy_from` (config, tokenizer, generation config, chat template).

    Built in a temporary folder beside `out_dir` and renamed at the end: a failure leaves no output.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise DdalignError(f"{out}: output folder exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        shards = _plan_shards(specs, parse_size(max_shard_size))
        names = ([SINGLE] if len(shards) == 1 else
                 [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
        meta = {"format": "pt", **(metadata or {})}
        for name, shard in zip(names, shards):
            write_safetensors(tmp / name, shard, produce, metadata=meta)
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(s.nbytes for s in specs)},
                     "weight_map": {s.name: name for name, shard in zip(names, shards) for s in shard}}
            (tmp / INDEX).write_text(json.dumps(index, indent=2))
        if copy_from is not None:
            source = Path(copy_from)
            source = source if source.is_dir() else source.parent
            for item in source.iterdir():
                if item.is_file() and not _is_weight_file(item) and not item.name.startswith("."):
                    shutil.copy2(item, tmp / item.name)
        for item in tmp.iterdir():
            with open(item, "rb") as f:
                os.fsync(f.fileno())
        if out.exists():
            backup = out.with_name(f".{out.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(out, backup)
            os.replace(tmp, out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
