"""Checkpoint I/O: lazy reads of (sharded) safetensors folders, fingerprints, streaming atomic writes.

(Over 500 lines: the reader and the writer share the format's header, dtype and file-copy
helpers, and the writer copies unchanged tensors straight from the reader's files.)

I/O only, no model logic (mergekit's split): the rest of ddalign asks for one tensor, or one
slice of one, at a time, so that peak memory is bounded by the largest tensor, not the model.
Writes go through a header-first safetensors writer fed tensor by tensor, into a temporary
file or folder that is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ddalign.errors import DdalignError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
WEIGHT_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
CHUNK = 16 << 20  # bytes per read: large enough for full speed, small against any tensor
_PREADV = hasattr(os, "preadv")

_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
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


_FINGERPRINTS: dict[tuple, str] = {}  # Checkpoint.fingerprint's memo


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    file: str
    begin: int = 0  # absolute byte offsets of the stored data in `file` (safetensors)
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


def _infos(files: Iterable[Path], metadata: dict | None = None) -> dict[str, TensorInfo]:
    """Tensor infos of every file's header; `metadata`, when given, collects the files' metadata."""
    infos: dict[str, TensorInfo] = {}
    for file in files:
        header, start = read_header(file)
        if metadata is not None:
            metadata.update(header.get("__metadata__") or {})
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            a, b = meta["data_offsets"]
            infos[name] = TensorInfo(name, tuple(meta["shape"]), meta["dtype"], str(file), start + a, start + b)
    return infos


class Checkpoint:
    """A Hugging Face folder (or one .safetensors file) read lazily, tensor by tensor."""

    def __init__(self, path: Path, infos: dict[str, TensorInfo], config: dict, pickled: dict | None = None):
        self.path = path
        self._infos = infos
        self.config = config
        self._pickled = pickled
        self._files: dict[str, object] = {}
        self.metadata: dict[str, str] = {}  # a single file's safetensors metadata (open_file)
        self.hub = None  # the Hub snapshot (ddalign.io.hub.HubSnapshot), if any

    # --- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path, *, allow_pickle: bool = False) -> "Checkpoint":
        """A folder, a .safetensors file, or a Hub id (`org/name[@revision]`, see ddalign.io.hub);
        `.hub` holds the Hub snapshot it came from (None for a local path)."""
        from ddalign.io.hub import resolve_model

        location = resolve_model(path, allow_pickle=allow_pickle)
        ck = cls._open_local(location.path, allow_pickle)
        ck.hub = location.hub
        return ck

    @classmethod
    def _open_local(cls, path: Path, allow_pickle: bool) -> "Checkpoint":
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
        return cls(folder, _infos(files), config)

    @classmethod
    def open_file(cls, path) -> "Checkpoint":
        """One .safetensors file on its own (a patch): no config, no folder around it; its header's
        metadata in `.metadata`."""
        path = Path(path)
        metadata: dict = {}
        ck = cls(path, _infos([path], metadata), {})
        ck.metadata = metadata
        return ck

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
                raise DdalignError(
                    f"{pickled[0]}: pickle weights can run code when loaded; convert to safetensors "
                    f"or pass --allow-pickle (then read with torch.load(weights_only=True))"
                )
            return pickled
        raise DdalignError(f"{folder}: no *.safetensors weights found")

    @classmethod
    def _open_pickle(cls, folder: Path, files: list[Path], config: dict) -> "Checkpoint":
        tensors: dict[str, torch.Tensor] = {}
        infos: dict[str, TensorInfo] = {}
        for file in files:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # torch raises many kinds for a bad pickle
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
    # Positional reads into memory the tensor owns, not safetensors' memory map: a mapped file's
    # touched pages count in the process's RSS until it exits, so streaming a model through a
    # map grows RSS by the model's size; read into owned buffers, memory is freed per tensor.

    def _file(self, file: str):
        if file not in self._files:
            self._files[file] = open(file, "rb", buffering=0)
        return self._files[file]

    def _read_into(self, info: TensorInfo, buffer: memoryview, offset: int, digest=None) -> None:
        """Fill `buffer` with the tensor's stored bytes from `offset` on (relative to its start)."""
        f, done = self._file(info.file), 0
        while done < len(buffer):
            part = buffer[done : done + CHUNK]
            if _PREADV:
                n = os.preadv(f.fileno(), [part], info.begin + offset + done)
            else:  # no preadv (Windows, older macOS): seek and read
                f.seek(info.begin + offset + done)
                n = f.readinto(part)
            if not n:
                raise DdalignError(f"{info.file}: truncated inside tensor {info.name}")
            if digest is not None:
                digest.update(part[:n])
            done += n

    def _read_tensor(self, info: TensorInfo, digest=None, into: torch.Tensor | None = None) -> torch.Tensor:
        if into is not None and into.numel() < info.nbytes:
            raise ValueError(f"buffer of {into.numel()} bytes for {info.name} ({info.nbytes} bytes)")
        data = torch.empty(info.nbytes, dtype=torch.uint8) if into is None else into[: info.nbytes]
        if info.nbytes:
            self._read_into(info, memoryview(data.numpy()), 0, digest)
        return data.view(torch_dtype(info.dtype)).reshape(info.shape)

    def get(self, name: str, into: torch.Tensor | None = None) -> torch.Tensor:
        """One tensor, read into memory of its own, or into `into` (uint8, at least the tensor's
        bytes: a buffer reused from tensor to tensor)."""
        info = self.info(name)
        if self._pickled is not None:
            return self._pickled[name].clone()
        return self._read_tensor(info, into=into)

    def get_fingerprinted(self, name: str, into: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
        """One tensor and its fingerprint from a single read; `into` (uint8, at least the tensor's
        bytes) is a buffer to reuse, so that streaming many tensors keeps one allocation."""
        info = self.info(name)
        if self._pickled is not None:
            return self._pickled[name].clone(), self.fingerprint(name)
        digest = hashlib.sha256()
        tensor = self._read_tensor(info, digest, into)
        return tensor, digest.hexdigest()

    def get_slice(self, name: str, dim: int | None, start: int = 0, stop: int = 0) -> torch.Tensor:
        """Rows (dim 0) or columns (dim 1) start:stop of one tensor, reading only those bytes where possible."""
        info = self.info(name)
        if dim is None:
            return self.get(name)
        if not 0 <= start <= stop <= info.shape[dim]:
            raise DdalignError(f"{name}: slice {start}:{stop} along dim {dim} outside shape {list(info.shape)}")
        if self._pickled is not None:
            return self._pickled[name].narrow(dim, start, stop - start).clone()
        dtype = torch_dtype(info.dtype)
        shape = list(info.shape)
        outer = math.prod(shape[:dim])
        inner = math.prod(shape[dim + 1 :]) * dtype.itemsize  # bytes per index along dim
        out = torch.empty(outer, (stop - start) * inner, dtype=torch.uint8)
        if dim == 0 or stop - start == shape[dim]:  # contiguous bytes: read them
            if out.numel():
                self._read_into(info, memoryview(out.numpy()).cast("B"), start * inner)
        elif out.numel():  # strided: a band of rows at a time
            row = shape[dim] * inner
            band = max(1, CHUNK // max(row, 1))
            buffer = torch.empty(min(band, outer) * row, dtype=torch.uint8)
            for first in range(0, outer, band):
                count = min(band, outer - first)
                chunk = buffer[: count * row]
                self._read_into(info, memoryview(chunk.numpy()), first * row)
                out[first : first + count] = chunk.view(count, row)[:, start * inner : stop * inner]
        shape[dim] = stop - start
        return out.reshape(-1).view(dtype).reshape(shape)

    def raw(self, name: str) -> bytes:
        """The stored bytes of one tensor (exact comparisons; writers copy with `source`)."""
        info = self.info(name)
        if self._pickled is not None:
            return tensor_bytes(self._pickled[name])
        data = bytearray(info.nbytes)
        if info.nbytes:
            self._read_into(info, memoryview(data), 0)
        return bytes(data)

    def source(self, name: str) -> "FileRange | torch.Tensor":
        """What a writer needs to copy the tensor unchanged: its bytes' place in a file (copied by
        the kernel, never through Python memory), or the tensor itself for pickle checkpoints."""
        info = self.info(name)
        if self._pickled is not None:
            return self._pickled[name]
        return FileRange(info.file, info.begin, info.nbytes)

    def fingerprint(self, name: str) -> str:
        """sha256 of the tensor's stored bytes, read in chunks into one reused buffer."""
        info = self.info(name)
        digest = hashlib.sha256()
        if self._pickled is not None:
            digest.update(tensor_bytes(self._pickled[name]))
            return digest.hexdigest()
        # One process asks for the same tensors' prints more than once (a run's base check and its
        # resume fingerprint): remembered by file identity and byte range, so a replaced or
        # rewritten file is hashed again.
        st = os.fstat(self._file(info.file).fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, info.begin, info.end)
        if key not in _FINGERPRINTS:
            buffer = memoryview(bytearray(min(CHUNK, info.nbytes)))
            for offset in range(0, info.nbytes, CHUNK):
                part = buffer[: min(CHUNK, info.nbytes - offset)]
                self._read_into(info, part, offset, digest)
            _FINGERPRINTS[key] = digest.hexdigest()
        return _FINGERPRINTS[key]

    def fingerprints(self, names: Iterable[str] | None = None) -> dict[str, str]:
        return {n: self.fingerprint(n) for n in (self.names() if names is None else names)}

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tensor_buffer(tensor: torch.Tensor) -> memoryview:
    """The bytes safetensors stores for a tensor (row-major, little-endian), without a copy
    when the tensor is already contiguous on the CPU."""
    t = tensor.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor_buffer(tensor).tobytes()


@dataclass(frozen=True)
class FileRange:
    """Bytes to copy unchanged from a file: a writer hands them to the kernel (copy_file_range)."""

    file: str
    offset: int
    nbytes: int


def _copy_range(src: FileRange, out, sources: dict) -> None:
    """Copy in the kernel. Source files stay open from range to range (`sources`): a fresh open
    would restart the kernel's readahead at every tensor."""
    out.flush()
    if src.file not in sources:
        sources[src.file] = open(src.file, "rb")
    f, done = sources[src.file], 0
    while done < src.nbytes:
        try:
            n = os.copy_file_range(f.fileno(), out.fileno(), src.nbytes - done, src.offset + done)
        except (AttributeError, OSError):  # no copy_file_range here (other OS, filesystems)
            break
        if n == 0:
            break
        done += n
    if done < src.nbytes:  # copy through user space, a chunk at a time
        f.seek(src.offset + done)
        while done < src.nbytes:
            chunk = f.read(min(CHUNK, src.nbytes - done))
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
    if done != src.nbytes:
        raise DdalignError(f"{src.file}: truncated ({done} of {src.nbytes} bytes at offset {src.offset} readable)")


def parse_size(text: str | int) -> int:
    """'2GB' -> 2_000_000_000, '500MB', '1GiB', or a plain byte count."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?i?[bB]?)\s*", str(text))
    if not m:
        raise DdalignError(f"--max-shard-size {text!r}: expected a size such as 2GB, 500MB or 1GiB")
    number, unit = float(m.group(1)), m.group(2).upper().rstrip("B")
    scale = {
        "": 1,
        "K": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
        "KI": 2**10,
        "MI": 2**20,
        "GI": 2**30,
        "TI": 2**40,
    }[unit]
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


Producer = Callable[[str], "torch.Tensor | bytes | FileRange"]


def _header_bytes(specs: Sequence[TensorSpec], metadata: dict[str, str] | None, reserve: int = 0) -> bytes:
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    total = len(raw) + reserve
    total += (-total) % 8
    return raw + b" " * (total - len(raw))


def write_safetensors(
    path,
    specs: Sequence[TensorSpec],
    produce: Producer,
    *,
    metadata: dict[str, str] | None = None,
    final_metadata: Callable[[], dict[str, str]] | None = None,
    reserve: int = 0,
    sync: bool = True,
) -> Path:
    """Write one safetensors file tensor by tensor (header first), atomically.

    `final_metadata`, when given, replaces the metadata after every tensor is written (for
    statistics gathered while streaming); `reserve` bytes of header space make room for it.
    `sync=False` leaves the fsync before the rename to the caller (a folder writer syncs shards
    in the background while it writes the next).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len({s.name for s in specs}) != len(specs):
        raise DdalignError(f"{path}: duplicate tensor names")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    sources: dict = {}
    try:
        with os.fdopen(fd, "wb") as f:
            header = _header_bytes(specs, metadata, reserve)
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            for spec in specs:
                data = produce(spec.name)
                if isinstance(data, FileRange):
                    if data.nbytes != spec.nbytes:
                        raise DdalignError(f"{spec.name}: {data.nbytes} bytes to copy, expected {spec.nbytes}")
                    _copy_range(data, f, sources)
                    continue
                if isinstance(data, torch.Tensor):
                    if tuple(data.shape) != tuple(spec.shape) or dtype_code(data.dtype) != spec.dtype:
                        raise DdalignError(
                            f"{spec.name}: produced {list(data.shape)} {dtype_code(data.dtype)}, "
                            f"expected {list(spec.shape)} {spec.dtype}"
                        )
                    data = tensor_buffer(data)
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
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp made it 0600
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if sync:
            _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        for source in sources.values():
            source.close()
    return path


def save_file_atomic(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> Path:
    specs = [TensorSpec(n, tuple(t.shape), dtype_code(t.dtype)) for n, t in tensors.items()]
    return write_safetensors(path, specs, lambda n: tensors[n], metadata=metadata)


def _umask() -> int:
    from ddalign.io.outputs import umask

    return umask()


def _remove(path: Path) -> None:
    """A folder, a file or a link, gone (a replaced output's backup)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


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


def write_checkpoint(
    out_dir,
    specs: Sequence[TensorSpec],
    produce: Producer,
    *,
    copy_from=None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
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
        names = (
            [SINGLE]
            if len(shards) == 1
            else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        )
        meta = {"format": "pt", **(metadata or {})}
        with ThreadPoolExecutor(1, thread_name_prefix="ddalign-fsync") as syncer:
            synced = []
            for name, shard in zip(names, shards):
                write_safetensors(tmp / name, shard, produce, metadata=meta, sync=False)
                synced.append(syncer.submit(_fsync_file, tmp / name))  # while the next shard is written
            for job in synced:
                job.result()
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": sum(s.nbytes for s in specs)},
                "weight_map": {s.name: name for name, shard in zip(names, shards) for s in shard},
            }
            (tmp / INDEX).write_text(json.dumps(index, indent=2))
        if copy_from is not None:
            source = Path(copy_from)
            source = source if source.is_dir() else source.parent
            for item in source.iterdir():
                if item.is_file() and not _is_weight_file(item) and not item.name.startswith("."):
                    shutil.copy2(item, tmp / item.name)
        from ddalign.io.outputs import apply_umask, record_written

        record_written(tmp, [item.name for item in tmp.iterdir()])
        for item in tmp.iterdir():
            if item.name not in names:
                _fsync_file(item)
        _fsync_dir(tmp)  # the shards' names, renamed in without a sync
        apply_umask(tmp, folder=True)  # mkdtemp made it 0700
        if out.exists() or out.is_symlink():
            backup = out.with_name(f".{out.name}.old")
            _remove(backup)
            os.replace(out, backup)
            os.replace(tmp, out)
            _remove(backup)
        else:
            os.replace(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
