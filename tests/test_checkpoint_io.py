"""The streaming read and copy paths: positional reads, strided slices, reused buffers, kernel copies,
lazily read patches."""

from __future__ import annotations

import os

import pytest
import torch

import ddalign.io.checkpoint as checkpoint
from ddalign.io.checkpoint import Checkpoint, TensorSpec, save_file_atomic, write_checkpoint
from ddalign.io.patch import Patch
from ddalign.transfer.extract import PENDING, extract
from tests.families import make_checkpoint

TENSORS = {
    "two": torch.arange(7 * 12, dtype=torch.float32).reshape(7, 12),
    "three": torch.randn(5, 6, 4, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16),
    "half": torch.randn(9, 10, generator=torch.Generator().manual_seed(1)).to(torch.float16),
    "flags": torch.rand(6, 3, generator=torch.Generator().manual_seed(2)) > 0.5,
    "empty": torch.zeros(0, 4),
}


@pytest.fixture()
def stored(tmp_path):
    path = save_file_atomic(TENSORS, tmp_path / "t.safetensors")
    return Checkpoint.open_file(path)


@pytest.mark.parametrize("chunk,preadv", [(16 << 20, True), (40, True), (7, True), (40, False)])
def test_slices_equal_narrowed_tensors_whatever_the_read_size(stored, monkeypatch, chunk, preadv):
    monkeypatch.setattr(checkpoint, "CHUNK", chunk)  # small chunks: many bands, partial reads
    monkeypatch.setattr(checkpoint, "_PREADV", preadv and checkpoint._PREADV)  # False: seek and read
    for name, full in TENSORS.items():
        assert torch.equal(stored.get(name), full)
        for dim in range(full.dim()):
            size = full.shape[dim]
            for start, stop in [(0, size), (1, max(1, size - 2)), (size // 2, size // 2 + 1), (2, 2)]:
                if start > stop or stop > size:
                    continue
                got = stored.get_slice(name, dim, start, stop)
                assert torch.equal(got, full.narrow(dim, start, stop - start)), (name, dim, start, stop)
                assert got.is_contiguous()


def test_reads_are_owned_memory_and_buffers_are_reused(stored):
    first = stored.get("two")
    first.zero_()  # owned: the file is not behind it
    assert torch.equal(stored.get("two"), TENSORS["two"])
    buffer = torch.empty(4096, dtype=torch.uint8)
    x, fx = stored.get_fingerprinted("two", into=buffer)
    assert x.data_ptr() == buffer.data_ptr() and torch.equal(x, TENSORS["two"])
    assert fx == stored.fingerprint("two")
    y = stored.get("half", into=buffer)
    assert y.data_ptr() == buffer.data_ptr() and torch.equal(y, TENSORS["half"])
    with pytest.raises(ValueError):
        stored.get("two", into=torch.empty(8, dtype=torch.uint8))


def test_truncated_file_is_named(tmp_path):
    path = save_file_atomic(TENSORS, tmp_path / "t.safetensors")
    ck = Checkpoint.open_file(path)
    os.truncate(path, ck.info("two").begin + 10)  # after the header was read
    with pytest.raises(checkpoint.DdalignError, match="truncated inside tensor two"):
        ck.get("two")


@pytest.mark.parametrize("kernel", [True, False])
def test_copies_are_byte_identical_with_and_without_copy_file_range(tmp_path, monkeypatch, kernel):
    u = make_checkpoint("llama", tmp_path / "u", sharded=True)
    ck = Checkpoint.open(u)
    if not kernel:

        def unavailable(*args):
            raise OSError(38, "copy_file_range: not supported")

        monkeypatch.setattr(os, "copy_file_range", unavailable)
    specs = [TensorSpec(n, ck.info(n).shape, ck.info(n).dtype) for n in ck.names()]
    out = write_checkpoint(tmp_path / "copy", specs, ck.source, copy_from=u, max_shard_size="20KB")
    co = Checkpoint.open(out)
    assert len(list(out.glob("*.safetensors"))) > 1
    assert all(co.raw(n) == ck.raw(n) for n in ck.names())


def test_patch_values_are_read_when_used_and_again_after_release(tmp_path):
    a, u = make_checkpoint("llama", tmp_path / "a", seed=1), make_checkpoint("llama", tmp_path / "u", seed=2)
    extract(a, u, scope="mlp", out=tmp_path / "b.safetensors")
    patch = Patch.load(tmp_path / "b.safetensors")
    assert all(e._values is None for e in patch.entries)  # nothing read yet
    entry = patch.entries[0]
    first = entry.values.clone()
    assert entry._values is not None
    entry.release()
    assert entry._values is None and torch.equal(entry.values, first)
    ca = Checkpoint.open(a)
    assert torch.equal(first, entry.slice.take(ca.get(entry.slice.tensor)))
    fingerprints = patch.manifest["aligned"]["fingerprints"] | patch.manifest["unaligned"]["fingerprints"]
    assert PENDING not in fingerprints.values()  # every placeholder was filled in
    assert patch.manifest["aligned"]["fingerprints"] == ca.fingerprints(patch.tensors())


def test_fingerprints_are_hashed_once_per_file_and_again_when_it_changes(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from ddalign.io.checkpoint import Checkpoint

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(8, dtype=torch.float32)}, str(path))
    reads = []
    original = Checkpoint._read_into
    monkeypatch.setattr(Checkpoint, "_read_into", lambda self, *a, **k: (reads.append(1), original(self, *a, **k))[1])
    first = Checkpoint.open(tmp_path).fingerprint("w")
    assert Checkpoint.open(tmp_path).fingerprint("w") == first and len(reads) == 1  # a second reader: remembered
    save_file({"w": torch.arange(8, dtype=torch.float32) + 1}, str(path))  # the same path, another tensor
    assert Checkpoint.open(tmp_path).fingerprint("w") != first and len(reads) == 2
