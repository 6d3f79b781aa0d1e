"""Architecture maps: every family's components resolve to real, in-bounds slices whose meaning
matches what transformers computes (FFN neuron blocks, fused and transposed tensors, biases)."""

from __future__ import annotations

import math

import pytest
import torch
from families import FAMILIES, FFN, HIDDEN, make_checkpoint, read_config, read_shapes
from hypothesis import given, settings
from hypothesis import strategies as st

from ddalign.architectures import ArchitectureMap, Component, TensorSlice, format_layers, parse_layers, parse_scope
from ddalign.errors import DdalignError

LAYERS = 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: make_checkpoint(f, root / f, layers=LAYERS, seed=3) for f in FAMILIES}


@pytest.fixture(scope="module")
def maps(folders):
    return {f: ArchitectureMap.from_config(read_config(p), read_shapes(p)) for f, p in folders.items()}


@pytest.fixture(scope="module")
def stored(folders):
    """family -> {tensor name: stored values}."""
    return {f: tensors(p) for f, p in folders.items()}


def load_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def tensors(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def take(slices: list[TensorSlice], values: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [s.take(values[s.tensor]) for s in slices]


# ---------------------------------------------------------------------- every family, generic


@pytest.mark.parametrize("family", FAMILIES)
def test_every_component_resolves_to_existing_in_bounds_slices(maps, family):
    amap = maps[family]
    assert amap.num_layers == LAYERS and amap.ffn_size == FFN
    units = amap.components("all")
    blocks = amap.components("all", granularity="block", block_size=24)
    assert len(blocks) > len(units)
    for component in units + blocks:
        slices = amap.resolve(component)
        assert slices, component
        for s in slices:
            assert s.tensor in amap.shapes, (component, s)
            if s.dim is not None:
                assert 0 <= s.start < s.stop <= amap.shapes[s.tensor][s.dim], (component, s)


@pytest.mark.parametrize("family", FAMILIES)
def test_scope_all_covers_every_stored_tensor_exactly_once(maps, family):
    amap = maps[family]
    assert amap.unmapped == []
    units = amap.components("all")
    assert sum(amap.param_count(c) for c in units) == amap.total_params()
    seen: dict[str, int] = {}
    for c in units:
        for s in amap.resolve(c):
            seen[s.tensor] = seen.get(s.tensor, 0) + s.numel(amap.shapes[s.tensor])
    assert seen == {name: math.prod(shape) for name, shape in amap.shapes.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_partition_the_rows_of_each_module(maps, family):
    amap = maps[family]
    for unit in amap.components("all", layers=[1]):
        size = amap.extent(unit)
        blocks = amap.expand(unit, "block", block_size=10)
        if size is None:
            assert blocks == [unit]
            continue
        assert [b.block for b in blocks] == [(a, min(a + 10, size)) for a in range(0, size, 10)]
        rows: dict[tuple[str, int], list[int]] = {}
        for b in blocks:
            for s in amap.resolve(b):
                rows.setdefault((s.tensor, s.dim), []).extend(range(s.start, s.stop))
        for (tensor, dim), covered in rows.items():
            assert len(covered) == len(set(covered)), (unit, tensor)  # no overlap
            assert sorted(covered) == list(range(min(covered), min(covered) + len(covered)))


@pytest.mark.parametrize("family", FAMILIES)
def test_total_params_matches_the_loaded_model(folders, maps, family):
    model = load_model(folders[family])
    assert maps[family].total_params() == sum(p.numel() for p in model.parameters())


def test_tied_families_have_no_head_and_untied_ones_do(maps):
    for family in ("gemma", "gemma2", "gpt2", "llama_tied"):
        assert maps[family].tied and Component.parse("head") not in maps[family].components("all")
        assert maps[family].describe()["tied_head"].startswith("the output layer is tied to the embeddings")
        assert "tied=True" in repr(maps[family]) and not maps[family].tied_copies
        with pytest.raises(DdalignError, match="tied to the embeddings"):
            maps[family].resolve("head")
    assert "tied_head" not in maps["llama"].describe()
    for family in ("llama", "qwen2", "phi3", "gpt_neox", "stablelm"):
        assert Component.parse("head") in maps[family].components("all")


# ---------------------------------------------------------------------- family semantics


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2", "phi3", "gpt2", "gpt_neox", "stablelm", "starcoder2"])
def test_mlp_neuron_blocks_sum_to_the_real_mlp_output(folders, maps, stored, family):
    """L1.mlp[a:b] is a group of FFN neurons: the blocks' partial outputs add up to the MLP's."""
    amap, values = maps[family], stored[family]
    model = load_model(folders[family])
    layer = {"gpt2": lambda m: m.transformer.h[1], "gpt_neox": lambda m: m.gpt_neox.layers[1]}.get(
        family, lambda m: m.model.layers[1]
    )(model)
    torch.manual_seed(0)
    x = torch.randn(5, HIDDEN)
    with torch.no_grad():
        expected = layer.mlp(x)
        total = torch.zeros_like(expected)
        act = (
            layer.mlp.act
            if family in ("gpt2", "gpt_neox", "starcoder2")
            else layer.mlp.activation_fn
            if family == "phi3"
            else layer.mlp.act_fn
        )
        for block in amap.expand("L1.mlp", "block", block_size=24):
            parts = amap.resolve(block)
            by_role = _mlp_roles(family, parts, values)
            if family == "gpt2":  # Conv1D: weights stored (in, out)
                h = act(x @ by_role["up_w"] + by_role["up_b"])
                total += h @ by_role["down_w"]
            elif family in ("gpt_neox", "starcoder2"):  # no gate; biased up projection
                h = act(x @ by_role["up_w"].T + by_role["up_b"])
                total += h @ by_role["down_w"].T
            else:
                h = act(x @ by_role["gate_w"].T) * (x @ by_role["up_w"].T)
                total += h @ by_role["down_w"].T
        # the output-side bias belongs to the whole module, never to a block
        down_bias = {
            "gpt2": "transformer.h.1.mlp.c_proj.bias",
            "gpt_neox": "gpt_neox.layers.1.mlp.dense_4h_to_h.bias",
            "starcoder2": "model.layers.1.mlp.c_proj.bias",
        }.get(family)
        if down_bias:
            assert down_bias not in {s.tensor for b in amap.expand("L1.mlp", "block", 24) for s in amap.resolve(b)}
            assert down_bias in {s.tensor for s in amap.resolve("L1.mlp")}
            total += values[down_bias]
    torch.testing.assert_close(total, expected, rtol=1e-4, atol=1e-5)


def _mlp_roles(family, parts, values):
    """Name the values of a resolved L1.mlp[a:b] by role."""
    roles = {}
    for s in parts:
        v = s.take(values[s.tensor])
        if family == "phi3" and "gate_up_proj" in s.tensor:
            roles["gate_w" if s.start < FFN else "up_w"] = v
        elif any(k in s.tensor for k in ("gate_proj",)):
            roles["gate_w"] = v
        elif any(k in s.tensor for k in ("up_proj", "c_fc", "dense_h_to_4h")):
            roles["up_b" if s.tensor.endswith("bias") else "up_w"] = v
        elif any(k in s.tensor for k in ("down_proj", "mlp.c_proj", "dense_4h_to_h")):
            roles["down_w"] = v
    return roles


def test_mlp_block_dims_gate_up_rows_down_columns(maps):
    llama = maps["llama"]
    assert llama.resolve("L2.mlp[16:40]") == [
        TensorSlice("model.layers.2.mlp.gate_proj.weight", 0, 16, 40),
        TensorSlice("model.layers.2.mlp.up_proj.weight", 0, 16, 40),
        TensorSlice("model.layers.2.mlp.down_proj.weight", 1, 16, 40),
    ]
    # scope mlp.gate: a block is rows of gate only
    assert llama.resolve("L2.mlp.gate[16:40]") == [TensorSlice("model.layers.2.mlp.gate_proj.weight", 0, 16, 40)]
    assert llama.param_count("L2.mlp.gate[16:40]") == 24 * HIDDEN
    assert llama.param_count("L2.mlp[16:40]") == 3 * 24 * HIDDEN


def test_gpt2_conv1d_dims_are_transposed(maps):
    gpt2 = maps["gpt2"]
    assert gpt2.resolve("L0.mlp[0:8]") == [
        TensorSlice("transformer.h.0.mlp.c_fc.weight", 1, 0, 8),
        TensorSlice("transformer.h.0.mlp.c_fc.bias", 0, 0, 8),
        TensorSlice("transformer.h.0.mlp.c_proj.weight", 0, 0, 8),
    ]
    assert gpt2.resolve("L0.attn.v") == [
        TensorSlice("transformer.h.0.attn.c_attn.weight", 1, 2 * HIDDEN, 3 * HIDDEN),
        TensorSlice("transformer.h.0.attn.c_attn.bias", 0, 2 * HIDDEN, 3 * HIDDEN),
    ]
    # attn.o is rowwise: its blocks are input features, stored as rows of the (in, out) weight
    assert gpt2.resolve("L0.attn.o[4:8]") == [TensorSlice("transformer.h.0.attn.c_proj.weight", 0, 4, 8)]


def test_gpt2_fused_q_k_v_match_the_real_projection(folders, maps, stored):
    amap, values = maps["gpt2"], stored["gpt2"]
    attn = load_model(folders["gpt2"]).transformer.h[0].attn
    x = torch.randn(3, HIDDEN)
    with torch.no_grad():
        qkv = attn.c_attn(x)
        for i, name in enumerate(("q", "k", "v")):
            w, b = take(amap.resolve(f"L0.attn.{name}[2:9]"), values)
            torch.testing.assert_close(x @ w + b, qkv[:, i * HIDDEN + 2 : i * HIDDEN + 9])


def test_phi3_gate_half_and_up_half(folders, maps, stored):
    amap, values = maps["phi3"], stored["phi3"]
    name = "model.layers.0.mlp.gate_up_proj.weight"
    assert amap.resolve("L0.mlp.gate") == [TensorSlice(name, 0, 0, FFN)]
    assert amap.resolve("L0.mlp.up") == [TensorSlice(name, 0, FFN, 2 * FFN)]
    assert amap.resolve("L0.mlp.up[8:16]") == [TensorSlice(name, 0, FFN + 8, FFN + 16)]
    assert amap.resolve("L0.mlp") == [TensorSlice(name, None), TensorSlice("model.layers.0.mlp.down_proj.weight", None)]
    mlp = load_model(folders["phi3"]).model.layers[0].mlp
    x = torch.randn(4, HIDDEN)
    with torch.no_grad():
        (gate,), (up,), (down,) = (take(amap.resolve(f"L0.mlp.{m}"), values) for m in ("gate", "up", "down"))
        ours = (mlp.activation_fn(x @ gate.T) * (x @ up.T)) @ down.T
        torch.testing.assert_close(ours, mlp(x), rtol=1e-4, atol=1e-5)


def test_phi3_fused_qkv_offsets_follow_the_head_counts(maps):
    amap = maps["phi3"]
    q, kv = 4 * (HIDDEN // 4), 2 * (HIDDEN // 4)
    name = "model.layers.1.self_attn.qkv_proj.weight"
    assert amap.resolve("L1.attn.q") == [TensorSlice(name, 0, 0, q)]
    assert amap.resolve("L1.attn.k") == [TensorSlice(name, 0, q, q + kv)]
    assert amap.resolve("L1.attn.v[1:3]") == [TensorSlice(name, 0, q + kv + 1, q + kv + 3)]


def test_qwen2_qkv_biases_are_sliced_with_their_rows(folders, maps, stored):
    amap, values = maps["qwen2"], stored["qwen2"]
    assert amap.resolve("L1.attn.k[4:12]") == [
        TensorSlice("model.layers.1.self_attn.k_proj.weight", 0, 4, 12),
        TensorSlice("model.layers.1.self_attn.k_proj.bias", 0, 4, 12),
    ]
    attn = load_model(folders["qwen2"]).model.layers[1].self_attn
    x = torch.randn(2, HIDDEN)
    with torch.no_grad():
        for m, proj in (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj)):
            w, b = take(amap.resolve(f"L1.attn.{m}[4:12]"), values)
            torch.testing.assert_close(x @ w.T + b, proj(x)[:, 4:12])
    # o_proj has no bias in Qwen2; its blocks are columns
    assert amap.resolve("L1.attn.o[0:8]") == [TensorSlice("model.layers.1.self_attn.o_proj.weight", 1, 0, 8)]


def test_gpt_neox_interleaved_qkv_is_one_module(maps):
    amap = maps["gpt_neox"]
    assert [c.module for c in amap.components("attn", layers="0")] == ["attn.qkv", "attn.o"]
    assert amap.resolve("L0.attn.qkv") == [
        TensorSlice("gpt_neox.layers.0.attention.query_key_value.weight", None),
        TensorSlice("gpt_neox.layers.0.attention.query_key_value.bias", None),
    ]
    with pytest.raises(DdalignError, match="no module 'attn.q'"):
        amap.resolve("L0.attn.q")


def test_gemma2_extra_norms_are_modules(maps):
    mods = maps["gemma2"].modules(0)
    assert {"norm.in", "norm.post", "norm.pre_ffn", "norm.post_ffn"} <= set(mods)


# ---------------------------------------------------------------------- inference


def test_starcoder2_is_inferred_with_its_biased_linear_mlp(maps):
    amap = maps["starcoder2"]
    assert amap.inferred and amap.modules(0) == [
        "attn.q",
        "attn.k",
        "attn.v",
        "attn.o",
        "mlp.up",
        "mlp.down",
        "norm.in",
        "norm.post",
    ]
    assert amap.resolve("L0.mlp[8:16]") == [  # nn.Linear (out, in), not Conv1D
        TensorSlice("model.layers.0.mlp.c_fc.weight", 0, 8, 16),
        TensorSlice("model.layers.0.mlp.c_fc.bias", 0, 8, 16),
        TensorSlice("model.layers.0.mlp.c_proj.weight", 1, 8, 16),
    ]
    assert amap.resolve("L0.attn.o") == [
        TensorSlice("model.layers.0.self_attn.o_proj.weight", None),
        TensorSlice("model.layers.0.self_attn.o_proj.bias", None),
    ]


@pytest.mark.parametrize("family", ["stablelm", "olmo"])
def test_unlisted_family_is_inferred_from_tensor_names(maps, family):
    amap = maps[family]
    assert amap.inferred and amap.family == family
    assert {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"} <= set(amap.modules(0))
    assert amap.resolve("L2.mlp[0:8]") == [
        TensorSlice("model.layers.2.mlp.gate_proj.weight", 0, 0, 8),
        TensorSlice("model.layers.2.mlp.up_proj.weight", 0, 0, 8),
        TensorSlice("model.layers.2.mlp.down_proj.weight", 1, 0, 8),
    ]
    assert [str(c) for c in amap.components()] == [f"L{i}.mlp.gate" for i in range(LAYERS)]


def test_inference_without_config_detects_transposed_weights(folders):
    amap = ArchitectureMap.from_config({}, read_shapes(folders["gpt2"]))
    assert amap.inferred and amap.family == "unknown" and amap.ffn_size == FFN
    assert amap.resolve("L1.mlp[0:4]")[0] == TensorSlice("transformer.h.1.mlp.c_fc.weight", 1, 0, 4)
    assert amap.modules(0)[0] == "attn.qkv"


def test_inferred_unknown_leaves_become_extra_modules():
    shapes = {
        "blocks.0.ffn.w1.weight": (8, 4),
        "blocks.0.ffn.w3.weight": (8, 4),
        "blocks.0.ffn.w2.weight": (4, 8),
        "blocks.0.attn.q_norm.weight": (4,),
        "blocks.0.attn.rotary.inv_freq": (2,),
        "tok.weight": (10, 4),
    }
    amap = ArchitectureMap.from_config({"model_type": "mystery"}, shapes)
    assert amap.modules(0) == ["mlp.gate", "mlp.up", "mlp.down", "extra.attn.q_norm"]
    assert amap.resolve("L0.mlp[2:4]")[2] == TensorSlice("blocks.0.ffn.w2.weight", 1, 2, 4)
    assert "blocks.0.attn.rotary.inv_freq" in amap.unmapped and "tok.weight" in amap.unmapped


def test_mixture_of_experts_is_not_mistaken_for_a_dense_mlp():
    shapes = {
        f"model.layers.0.block_sparse_moe.experts.{e}.{w}.weight": (8, 4) for e in range(2) for w in ("w1", "w2", "w3")
    }
    shapes["model.layers.0.block_sparse_moe.gate.weight"] = (2, 4)
    with pytest.raises(DdalignError, match="experts.0.w1"):
        ArchitectureMap.from_config({"model_type": "mystery_moe"}, shapes)


def test_split_directions_come_from_the_tp_plan():
    from transformers import AutoConfig

    from ddalign.architectures import _tp_plan

    assert _tp_plan(AutoConfig.for_model("phi3")) == {
        "self_attn.qkv_proj": "colwise",
        "self_attn.o_proj": "rowwise",
        "mlp.gate_up_proj": "colwise",
        "mlp.down_proj": "rowwise",
    }
    assert _tp_plan(AutoConfig.for_model("gpt2")) == {}


def test_unknown_layout_error_lists_what_was_found():
    with pytest.raises(DdalignError) as err:
        ArchitectureMap.from_config({"model_type": "mystery"}, {"emb.weight": (4, 4), "proj.weight": (4, 4)})
    assert "mystery" in str(err.value) and "emb.weight" in str(err.value) and "proj.weight" in str(err.value)
    with pytest.raises(DdalignError) as err:
        ArchitectureMap.from_config(
            {"model_type": "mystery"}, {"net.0.mixer.weight": (4, 4), "net.0.scale.weight": (4,)}
        )
    assert "mixer" in str(err.value) and "scale" in str(err.value) and "MLP" in str(err.value)
    with pytest.raises(DdalignError, match="no tensors"):
        ArchitectureMap.from_config({"model_type": "llama"}, {})


def test_sharded_checkpoint_maps_like_a_single_file(tmp_path, maps):
    folder = make_checkpoint("llama", tmp_path / "sharded", layers=LAYERS, sharded=True, dtype=torch.bfloat16)
    assert len(list(folder.glob("*.safetensors"))) > 1
    amap = ArchitectureMap.from_config(read_config(folder), read_shapes(folder))
    for c in maps["llama"].components("all"):
        assert amap.resolve(c) == maps["llama"].resolve(c)


def test_from_checkpoint_uses_only_config_and_shapes(folders):
    class Fake:
        config = read_config(folders["qwen2"])

        def shapes(self):
            return read_shapes(folders["qwen2"])

    amap = ArchitectureMap.from_checkpoint(Fake())
    assert amap.family == "qwen2" and amap.num_layers == LAYERS


def test_from_checkpoint_with_the_real_checkpoint_reader(folders):
    from ddalign.io.checkpoint import Checkpoint

    with Checkpoint.open(folders["phi3"]) as ckpt:
        amap = ArchitectureMap.from_checkpoint(ckpt)
    assert amap.family == "phi3" and amap.ffn_size == FFN


# ---------------------------------------------------------------------- scopes and layers


def test_scopes(maps):
    llama = maps["llama"]
    names = lambda *a, **k: [str(c) for c in llama.components(*a, **k)]  # noqa: E731
    assert names() == ["L0.mlp.gate", "L1.mlp.gate", "L2.mlp.gate"]
    assert names("mlp", layers="1") == ["L1.mlp"]
    assert names("attn", layers="2") == ["L2.attn.q", "L2.attn.k", "L2.attn.v", "L2.attn.o"]
    everything = names("all")
    assert everything[0] == "embed" and everything[-2:] == ["norm.final", "head"]
    assert "L1.mlp" in everything and "L1.mlp.gate" not in everything and "L1.norm.in" in everything
    assert names("all", layers="1") == [
        "L1.attn.q",
        "L1.attn.k",
        "L1.attn.v",
        "L1.attn.o",
        "L1.mlp",
        "L1.norm.in",
        "L1.norm.post",
    ]
    assert names("L*.mlp.gate,L*.attn.o", layers="0-1") == ["L0.attn.o", "L0.mlp.gate", "L1.attn.o", "L1.mlp.gate"]
    assert names(["L*.mlp.gate", "L*.attn.o"], layers=[0, 1]) == names("L*.mlp.gate,L*.attn.o", layers="0-1")
    assert names("L1.mlp*") == ["L1.mlp"]  # gate/up/down inside L1.mlp
    assert names("mlp.down,L1.mlp") == ["L0.mlp.down", "L1.mlp", "L2.mlp.down"]
    assert names("L1.mlp.gate[0:16],embed,mlp.gate", layers=None) == [
        "embed",
        "L0.mlp.gate",
        "L1.mlp.gate",
        "L2.mlp.gate",
    ]  # the block is inside L1.mlp.gate
    assert names("L1.mlp.gate[0:16],L2.attn.o") == ["L1.mlp.gate[0:16]", "L2.attn.o"]
    assert names(
        "L1.mlp.gate[0:16],L1.mlp.gate[4:8],L1.mlp[0:32],L1.mlp.down[8:16],"
        "L1.mlp.up[32:40],L1.mlp.up[36:40],L2.attn.o[0:4],L2.attn.o"
    ) == ["L1.mlp[0:32]", "L1.mlp.up[32:40]", "L2.attn.o"]
    many = [f"L1.mlp.gate[{a}:{a + 1}]" for a in range(FFN)] + ["L1.mlp.gate[0:64]"]
    assert names(many) == ["L1.mlp.gate[0:64]"]
    assert names("L2") == ["L2.attn.q", "L2.attn.k", "L2.attn.v", "L2.attn.o", "L2.mlp", "L2.norm.in", "L2.norm.post"]
    assert llama.with_scope("L2").resolve("L2") == llama.resolve("L2", scope="all")
    assert names("L*.attn", layers="0") == ["L0.attn"]
    assert names("L*.attn", layers="0", granularity="block", block_size=16) == [
        "L0.attn.q[0:16]",
        "L0.attn.q[16:32]",
        "L0.attn.k[0:16]",
        "L0.attn.v[0:16]",
        "L0.attn.o[0:16]",
        "L0.attn.o[16:32]",
    ]
    assert names("mlp", layers=range(1, 3), granularity="layer") == ["L1", "L2"]
    assert names("all", granularity="layer") == ["embed", "L0", "L1", "L2", "norm.final", "head"]
    assert names("mlp.gate", layers="2", granularity="block", block_size=30) == [
        "L2.mlp.gate[0:30]",
        "L2.mlp.gate[30:60]",
        "L2.mlp.gate[60:64]",
    ]


def test_scope_errors(maps):
    with pytest.raises(DdalignError, match="mlp.gate.*gpt2.*mlp.up"):
        maps["gpt2"].components()  # GPT-2 has no gate: say what it has
    with pytest.raises(DdalignError, match="matches no component"):
        maps["llama"].components("L*.ffn.*")
    with pytest.raises(DdalignError, match="layer 7 does not exist"):
        maps["llama"].components("mlp", layers="2-7")
    with pytest.raises(DdalignError, match="no layer selected"):
        maps["llama"].components("mlp", layers=[])
    with pytest.raises(DdalignError, match="block end 99"):
        maps["llama"].resolve("L0.mlp.gate[0:99]")
    with pytest.raises(DdalignError, match="no rows"):
        maps["llama"].resolve("L0.norm.in[0:2]")
    with pytest.raises(DdalignError, match="layer 9 does not exist"):
        maps["llama"].resolve("L9.mlp")
    with pytest.raises(DdalignError, match="empty"):
        parse_scope(" , ")
    with pytest.raises(DdalignError, match="granularity"):
        maps["llama"].components("mlp", granularity="neuron")


def test_whole_layer_resolves_to_its_scope(maps):
    llama = maps["llama"]
    gate = [TensorSlice("model.layers.1.mlp.gate_proj.weight", None)]
    assert llama.resolve("L1") == gate  # default scope mlp.gate
    assert llama.with_scope("mlp").resolve("L1") == llama.resolve("L1.mlp")
    assert llama.resolve("L1", scope="attn") == [s for m in "qkvo" for s in llama.resolve(f"L1.attn.{m}")]
    assert llama.param_count("L1", scope="mlp") == 3 * FFN * HIDDEN
    assert llama.covers("L1", "L1.mlp.gate[0:8]") and not llama.covers("L1", "L1.mlp.up")
    assert llama.covers("L1.mlp", "L1.mlp.up[8:16]") and llama.covers("L1.mlp[0:32]", "L1.mlp.down[8:16]")
    assert not llama.covers("L1.mlp[0:32]", "L1.mlp[16:48]")


def test_expand_hierarchy(maps):
    llama = maps["llama"]
    assert llama.expand("L2", "module", scope="mlp") == [Component(2, "mlp")]
    assert [str(c) for c in llama.expand("L2", "module", scope="attn")] == [
        "L2.attn.q",
        "L2.attn.k",
        "L2.attn.v",
        "L2.attn.o",
    ]
    assert llama.expand("L2", "module") == [Component(2, "mlp.gate")]
    assert [str(c) for c in llama.expand("L2.mlp", "module")] == ["L2.mlp.gate", "L2.mlp.up", "L2.mlp.down"]
    assert [str(c) for c in llama.expand("L2.mlp.gate", "block", block_size=16)] == [
        f"L2.mlp.gate[{a}:{a + 16}]" for a in range(0, FFN, 16)
    ]
    assert [str(c) for c in llama.expand("L2.mlp[16:40]", "block", block_size=10)] == [
        "L2.mlp[16:26]",
        "L2.mlp[26:36]",
        "L2.mlp[36:40]",
    ]
    assert len(llama.expand("L2.mlp.up", "block")) == 8  # default: eighths
    assert llama.expand("L2.norm.in", "block", 4) == [Component(2, "norm.in")]
    assert llama.expand("embed", "block", 4) == [Component(None, "embed")]
    assert len(llama.expand("L0", "block", 16, scope="mlp")) == FFN // 16


# ---------------------------------------------------------------------- names and parsing

components = st.one_of(
    st.sampled_from(["embed", "head", "norm.final"]).map(lambda m: Component(None, m)),
    st.builds(
        lambda layer, module, block: Component(layer, module, None if module == "" else block),
        st.integers(0, 200),
        st.sampled_from(
            [
                "",
                "mlp",
                "mlp.gate",
                "mlp.up",
                "mlp.down",
                "attn.q",
                "attn.qkv",
                "attn.o",
                "norm.in",
                "extra.self_attn.q_norm",
            ]
        ),
        st.one_of(st.none(), st.tuples(st.integers(0, 5000), st.integers(1, 5000)).filter(lambda t: t[0] < t[1])),
    ),
)


@given(components)
@settings(max_examples=200, deadline=None)
def test_component_names_round_trip(component):
    assert Component.parse(component.name) == component
    assert Component.parse(str(component)) == component


@given(st.lists(components, min_size=2, max_size=8))
@settings(max_examples=100, deadline=None)
def test_component_order_is_total_and_model_ordered(items):
    ordered = sorted(items)
    for a, b in zip(ordered, ordered[1:]):
        assert not b < a
        if a.layer is not None and b.layer is not None:
            assert a.layer <= b.layer
    if any(c.name == "embed" for c in items):
        assert ordered[0].name == "embed"


@given(st.sets(st.integers(0, 80), max_size=30))
@settings(max_examples=200, deadline=None)
def test_layer_ranges_round_trip(layers):
    text = format_layers(layers)
    assert parse_layers(text) == sorted(layers) if layers else text == ""


def test_parse_layers_forms():
    assert parse_layers("8-12,15") == [8, 9, 10, 11, 12, 15]
    assert parse_layers(" 3 , 1-2 ") == [1, 2, 3]
    assert parse_layers(range(2, 5)) == [2, 3, 4]
    assert parse_layers(None) is None
    assert format_layers([8, 9, 10, 15]) == "8-10,15"
    for bad in ("", "a", "5-3", "1-", "-2", "1..3"):
        with pytest.raises(DdalignError, match="--layers"):
            parse_layers(bad)
    with pytest.raises(DdalignError, match="has 4 layers"):
        parse_layers("2-4", num_layers=4)


@pytest.mark.parametrize(
    "bad", ["L", "L3.", "3.mlp", "L3.mlp[4:2]", "L3[0:4]", "L3.mlp[0:]", "mlp", "heads", "L-1.mlp", "L3.mlp.gate[0:4]x"]
)
def test_bad_component_names_are_refused(bad):
    with pytest.raises(DdalignError):
        Component.parse(bad)


def test_tensor_slice_helpers():
    t = torch.arange(24).reshape(4, 6)
    s = TensorSlice("w", 1, 2, 5)
    assert s.shape((4, 6)) == (4, 3) and s.numel((4, 6)) == 12
    assert torch.equal(s.take(t), t[:, 2:5])
    assert TensorSlice.from_list(s.as_list()) == s
    assert TensorSlice("w", None).covers(s) and s.covers(TensorSlice("w", 1, 3, 4))
    assert not s.covers(TensorSlice("w", 0, 2, 3)) and not s.covers(TensorSlice("v", 1, 2, 5))
