"""Checkpoints, extract, patches and apply on tiny random checkpoints of every listed family."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from click.testing import CliRunner

from ddalign.cli import cli, main
from ddalign.errors import DdalignError
from ddalign.io.checkpoint import Checkpoint, TensorSpec, parse_size, write_checkpoint
from ddalign.io.patch import Patch
from ddalign.transfer.apply import InPlacePatcher, apply_patch, apply_to_folder, patched
from ddalign.transfer.extract import extract
from tests.families import make_checkpoint

SCOPES = {"gpt2": ["mlp", "all"], "gpt_neox": ["mlp", "all"]}


def _pair(tmp_path, family, **kw):
    return (
        make_checkpoint(family, tmp_path / "a", seed=1, **kw),
        make_checkpoint(family, tmp_path / "u", seed=2, **kw),
    )


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


@pytest.mark.parametrize(
    "family", ["llama", "mistral", "gemma", "gemma2", "qwen2", "phi3", "gpt2", "gpt_neox", "stablelm"]
)
def test_extract_apply_gives_aligned_on_components_unaligned_elsewhere(tmp_path, family):
    a, u = _pair(tmp_path, family)
    ca, cu = Checkpoint.open(a), Checkpoint.open(u)
    for scope in SCOPES.get(family, ["mlp.gate", "all"]):
        bundle = extract(a, u, scope=scope, out=tmp_path / f"{scope}.safetensors")
        out = apply_to_folder(bundle, u, tmp_path / f"out-{scope}").out
        co = Checkpoint.open(out)
        touched = set(bundle.tensors())
        for name in cu.names():
            if name not in touched:
                assert co.raw(name) == cu.raw(name), name  # byte-identical outside the patch
        for e in bundle.entries:  # patched slices equal the aligned values
            assert torch.equal(e.slice.take(co.get(e.slice.tensor)), e.slice.take(ca.get(e.slice.tensor)))
        if scope == "all":
            assert all(torch.equal(co.get(n), ca.get(n)) for n in ca.names())
        _load(out)  # transformers loads the output


def test_sharded_and_single_file_give_identical_bundles(tmp_path):
    a1, u1 = make_checkpoint("llama", tmp_path / "a1", seed=1), make_checkpoint("llama", tmp_path / "u1", seed=2)
    a2 = make_checkpoint("llama", tmp_path / "a2", seed=1, sharded=True)
    u2 = make_checkpoint("llama", tmp_path / "u2", seed=2, sharded=True)
    assert (tmp_path / "a2" / "model.safetensors.index.json").exists()
    b1 = extract(a1, u1, scope="mlp", out=tmp_path / "b1.safetensors")
    b2 = extract(a2, u2, scope="mlp", out=tmp_path / "b2.safetensors")
    assert b1.components() == b2.components()
    for x, y in zip(b1.entries, b2.entries):
        assert x.slice == y.slice and torch.equal(x.values, y.values)
    assert b1.manifest["components"] == b2.manifest["components"]


def test_manifest_statistics(tmp_path):
    a, u = _pair(tmp_path, "llama")
    bundle = extract(a, u, scope="mlp.gate", layers="1-2", out=tmp_path / "b.safetensors")
    assert bundle.components() == ["L1.mlp.gate", "L2.mlp.gate"]
    info = bundle.manifest["components"]["L1.mlp.gate"]
    ta = Checkpoint.open(a).get("model.layers.1.mlp.gate_proj.weight").double()
    tu = Checkpoint.open(u).get("model.layers.1.mlp.gate_proj.weight").double()
    assert info["delta_norm"] == pytest.approx(float((ta - tu).norm()))
    assert info["rel_delta"] == pytest.approx(float((ta - tu).norm() / tu.norm()))
    assert info["cosine"] == pytest.approx(float((ta * tu).sum() / ta.norm() / tu.norm()))
    m = bundle.manifest
    assert m["kind"] == "bundle" and m["layers"] == "1-2" and m["scope"] == "mlp.gate"
    assert m["unaligned"]["fingerprints"]["model.layers.1.mlp.gate_proj.weight"] == Checkpoint.open(u).fingerprint(
        "model.layers.1.mlp.gate_proj.weight"
    )


def test_restrict_to_blocks_and_gpt2_transposed_and_phi3_fused(tmp_path):
    a, u = _pair(tmp_path / "l", "llama")
    bundle = extract(a, u, scope="mlp", out=tmp_path / "b.safetensors")
    block = bundle.restrict(["L2.mlp[8:16]"])
    slices = {e.slice.tensor: e for e in block.entries}
    gate = slices["model.layers.2.mlp.gate_proj.weight"]
    assert gate.slice.dim == 0 and (gate.slice.start, gate.slice.stop) == (8, 16)
    down = slices["model.layers.2.mlp.down_proj.weight"]
    assert down.slice.dim == 1  # columns of down for FFN neurons
    assert torch.equal(down.values, Checkpoint.open(a).get("model.layers.2.mlp.down_proj.weight")[:, 8:16])
    # GPT-2 Conv1D stores (in, out): a neuron block is columns of c_fc and rows of c_proj
    a2, u2 = _pair(tmp_path / "g", "gpt2")
    g = extract(a2, u2, scope="mlp", out=tmp_path / "g.safetensors").restrict(["L1.mlp[0:8]"])
    dims = {e.slice.tensor: e.slice.dim for e in g.entries}
    assert dims["transformer.h.1.mlp.c_fc.weight"] == 1 and dims["transformer.h.1.mlp.c_proj.weight"] == 0
    # Phi-3: the gate is the first half of the fused gate_up_proj
    a3, u3 = _pair(tmp_path / "p", "phi3")
    p = extract(a3, u3, scope="mlp.gate", out=tmp_path / "p.safetensors")
    (entry,) = p.restrict(["L0.mlp.gate"]).entries
    full = Checkpoint.open(a3).get("model.layers.0.mlp.gate_up_proj.weight")
    assert entry.slice.dim == 0 and torch.equal(entry.values, full[: full.shape[0] // 2])


def test_patch_save_load_round_trip(tmp_path):
    a, u = _pair(tmp_path, "llama")
    bundle = extract(a, u, scope="all", out=tmp_path / "b.safetensors")
    sub = bundle.restrict(["L1.mlp[0:16]", "head"])
    sub.manifest["kind"] = "patch"
    sub.save(tmp_path / "p.safetensors")
    again = Patch.load(tmp_path / "p.safetensors")
    assert again.components() == ["L1.mlp[0:16]", "head"]
    assert all(torch.equal(x.values, y.values) and x.slice == y.slice for x, y in zip(sub.entries, again.entries))
    assert again.architecture().num_layers == 4


def test_patched_restores_on_exception_and_in_place_switching_is_exact(tmp_path):
    a, u = _pair(tmp_path, "llama")
    bundle = extract(a, u, scope="all", out=tmp_path / "b.safetensors")
    model = _load(u)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError):
        with patched(model, bundle):
            assert not torch.equal(model.state_dict()["lm_head.weight"], before["lm_head.weight"])
            raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    patcher = InPlacePatcher(model, bundle)
    patcher.set_active(["L1.mlp", "L1.mlp[0:8]", "head"])
    patcher.set_active(["L1.mlp[0:8]", "L2.attn.o"])  # overlapping: the module leaves, its block stays
    w = model.state_dict()["model.layers.1.mlp.gate_proj.weight"]
    aligned = Checkpoint.open(a).get("model.layers.1.mlp.gate_proj.weight")
    assert torch.equal(w[:8], aligned[:8]) and torch.equal(w[8:], before["model.layers.1.mlp.gate_proj.weight"][8:])
    assert torch.equal(model.state_dict()["lm_head.weight"], before["lm_head.weight"])
    patcher.restore()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    apply_patch(model, bundle)
    aligned_model = _load(a)
    assert all(torch.equal(v, aligned_model.state_dict()[k]) for k, v in model.state_dict().items())


def test_refusals(tmp_path):
    a, u = _pair(tmp_path, "llama")
    bundle = extract(a, u, scope="mlp.gate", out=tmp_path / "b.safetensors")
    # mismatched shapes
    other = make_checkpoint("llama", tmp_path / "big", seed=3, layers=3)
    with pytest.raises(DdalignError, match="model.layers.3"):
        extract(a, other, out=tmp_path / "x.safetensors")
    # existing output; other base
    (tmp_path / "exists").mkdir()
    with pytest.raises(DdalignError, match="exists"):
        apply_to_folder(bundle, u, tmp_path / "exists")
    with pytest.raises(DdalignError, match="differ from the unaligned model"):
        apply_to_folder(bundle, a, tmp_path / "o1")
    report = apply_to_folder(bundle, a, tmp_path / "o2", allow_other_base=True)
    assert len(report.differing_base) == report.checked == 4
    # corrupt header, truncated file, missing shard, pickle
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(struct.pack("<Q", 20) + b"{not json..........")
    with pytest.raises(DdalignError, match="corrupt safetensors header"):
        Checkpoint.open(bad)
    cut = tmp_path / "cut"
    cut.mkdir()
    data = (u / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(DdalignError, match="truncated"):
        Checkpoint.open(cut)
    sharded = make_checkpoint("llama", tmp_path / "sh", sharded=True)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    (sharded / next(iter(index["weight_map"].values()))).unlink()
    with pytest.raises(DdalignError, match="missing"):
        Checkpoint.open(sharded)
    pk = tmp_path / "pk"
    pk.mkdir()
    torch.save({"w": torch.ones(2)}, pk / "pytorch_model.bin")
    with pytest.raises(DdalignError, match="allow-pickle"):
        Checkpoint.open(pk)
    assert torch.equal(Checkpoint.open(pk, allow_pickle=True).get("w"), torch.ones(2))


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    u = make_checkpoint("llama", tmp_path / "u")
    ck = Checkpoint.open(u)
    before = {p.name: p.read_bytes() for p in u.iterdir()}
    specs = [TensorSpec(n, ck.info(n).shape, ck.info(n).dtype) for n in ck.names()]

    def failing(name):
        if name == specs[len(specs) // 2].name:
            raise OSError("disk full")
        return ck.raw(name)

    with pytest.raises(OSError):
        write_checkpoint(tmp_path / "out", specs, failing, copy_from=u, max_shard_size="10KB")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert {p.name: p.read_bytes() for p in u.iterdir()} == before
    assert parse_size("2GB") == 2_000_000_000 and parse_size("1GiB") == 2**30
    with pytest.raises(DdalignError):
        parse_size("lots")


def test_cli_extract_apply_and_errors(tmp_path, capsys):
    a, u = _pair(tmp_path, "llama")
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "extract",
            "--aligned",
            str(a),
            "--unaligned",
            str(u),
            "--scope",
            "mlp",
            "--layers",
            "1-2",
            "-o",
            str(tmp_path / "b.safetensors"),
            "--plot",
            str(tmp_path / "h.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(
        cli,
        ["apply", str(tmp_path / "b.safetensors"), "--to", str(u), "-o", str(tmp_path / "o"), "--components", "L1.*"],
    )
    assert res.exit_code == 0, res.output
    co, cu = Checkpoint.open(tmp_path / "o"), Checkpoint.open(u)
    assert co.raw("model.layers.2.mlp.up_proj.weight") == cu.raw("model.layers.2.mlp.up_proj.weight")
    with pytest.raises(SystemExit) as stop:
        main(["apply", str(tmp_path / "b.safetensors"), "--to", str(u), "-o", str(tmp_path / "o")])
    assert stop.value.code == 2
    assert "exists" in capsys.readouterr().err


# --- tied embeddings: the output layer is the embedding, one tensor, one component ------------


def test_tied_llama_moves_its_embedding_and_output_layer_as_one_component(tmp_path):
    """extract scope all -> apply -> load with transformers: lm_head is the patched embedding."""
    a, u = _pair(tmp_path, "llama_tied")
    assert "lm_head.weight" not in Checkpoint.open(u)  # tied: not stored
    bundle = extract(a, u, scope="all", out=tmp_path / "all.safetensors")
    assert "embed" in bundle.components() and "head" not in bundle.components()
    arch = bundle.manifest["architecture"]
    assert arch["tied"] and "embed" in arch["tied_head"]
    assert set(bundle.tensors()) <= set(Checkpoint.open(u).names())  # no slice of a missing tensor
    aligned, unaligned = _load(a), _load(u)
    want = aligned.model.embed_tokens.weight
    assert not torch.equal(unaligned.lm_head.weight, want)

    out = _load(apply_to_folder(bundle, u, tmp_path / "out-all").out)
    assert torch.equal(out.lm_head.weight, want) and torch.equal(out.model.embed_tokens.weight, want)

    only_embed = _load(apply_to_folder(bundle, u, tmp_path / "out-embed", components=["embed"]).out)
    assert torch.equal(only_embed.lm_head.weight, want)
    assert torch.equal(only_embed.model.layers[0].mlp.gate_proj.weight, unaligned.model.layers[0].mlp.gate_proj.weight)

    before = unaligned.lm_head.weight.detach().clone()
    with patched(unaligned, bundle.restrict(["embed"])):
        assert torch.equal(unaligned.lm_head.weight, want)
    assert torch.equal(unaligned.lm_head.weight, before)


def test_tied_checkpoint_that_stores_its_output_layer_keeps_both_copies_equal(tmp_path):
    """Some tied checkpoints store lm_head.weight anyway: the copy moves with embed and counts once."""
    from safetensors.torch import load_file, save_file

    from ddalign.architectures import ArchitectureMap

    a, u = _pair(tmp_path, "llama_tied")
    for folder in (a, u):
        tensors = load_file(str(folder / "model.safetensors"))
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    amap = ArchitectureMap.from_checkpoint(Checkpoint.open(a))
    assert amap.tied_copies == {"lm_head.weight": "model.embed_tokens.weight"} and amap.unmapped == []
    assert {s.tensor for s in amap.resolve("embed")} == {"model.embed_tokens.weight", "lm_head.weight"}
    embed_params = math.prod(Checkpoint.open(a).info("model.embed_tokens.weight").shape)
    assert amap.param_count("embed") == embed_params
    assert amap.total_params() == sum(p.numel() for p in _load(a).parameters())
    assert amap.describe()["tied_copies"] == {"lm_head.weight": "model.embed_tokens.weight"}

    bundle = extract(a, u, scope="all", out=tmp_path / "all.safetensors")
    assert bundle.manifest["components"]["embed"]["params"] == embed_params
    out = Checkpoint.open(apply_to_folder(bundle, u, tmp_path / "out", components=["embed"]).out)
    want = Checkpoint.open(a).get("model.embed_tokens.weight")
    assert torch.equal(out.get("model.embed_tokens.weight"), want) and torch.equal(out.get("lm_head.weight"), want)
