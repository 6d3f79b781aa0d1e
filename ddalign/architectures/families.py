"""Model families as data: which stored module is which component.

transformers' `base_model_tp_plan` (read in `layout.py`) says how each projection splits
("colwise": rows of the stored weight are output features; "rowwise": columns are input
features). These tables add only what the plan lacks: which module path is which component
(q, k, v, o, gate, up, down, norms), fused tensors (Phi-3 `qkv_proj` / `gate_up_proj`,
GPT-2 `c_attn`), the layer-less tensors' names, and GPT-2 entirely (Conv1D stores weights
transposed, and it has no plan). The name lists at the end serve the inference of an unlisted
family from tensor names (`infer.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Fused:
    """A module stored as part `index` of a fused tensor; `kind` says how the parts split."""

    path: str
    kind: str  # "qkv": (heads*hd, kv*hd, kv*hd); "thirds"; "halves"
    index: int


@dataclass(frozen=True)
class Family:
    modules: dict  # component module -> path | Fused
    layers: str = "layers"  # layer container under the base prefix
    embed: tuple[str, ...] = ("embed_tokens",)
    norm_final: str = "norm"
    head: str = "lm_head"
    conv1d: bool = False  # weights stored (in, out), as GPT-2's Conv1D
    split: dict = field(default_factory=dict)  # path -> colwise/rowwise, where no tp plan


_LLAMA_MODULES = {
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.o": "self_attn.o_proj",
    "mlp.gate": "mlp.gate_proj",
    "mlp.up": "mlp.up_proj",
    "mlp.down": "mlp.down_proj",
    "norm.in": "input_layernorm",
    "norm.post": "post_attention_layernorm",
}
FAMILIES: dict[str, Family] = {
    "llama": Family(_LLAMA_MODULES),
    "mistral": Family(_LLAMA_MODULES),
    "qwen2": Family(_LLAMA_MODULES),
    "gemma": Family(_LLAMA_MODULES),
    "gemma2": Family(
        {**_LLAMA_MODULES, "norm.pre_ffn": "pre_feedforward_layernorm", "norm.post_ffn": "post_feedforward_layernorm"}
    ),
    "phi3": Family(
        {
            "attn.q": Fused("self_attn.qkv_proj", "qkv", 0),
            "attn.k": Fused("self_attn.qkv_proj", "qkv", 1),
            "attn.v": Fused("self_attn.qkv_proj", "qkv", 2),
            "attn.o": "self_attn.o_proj",
            "mlp.gate": Fused("mlp.gate_up_proj", "halves", 0),
            "mlp.up": Fused("mlp.gate_up_proj", "halves", 1),
            "mlp.down": "mlp.down_proj",
            "norm.in": "input_layernorm",
            "norm.post": "post_attention_layernorm",
        }
    ),
    "gpt2": Family(
        {
            "attn.q": Fused("attn.c_attn", "thirds", 0),
            "attn.k": Fused("attn.c_attn", "thirds", 1),
            "attn.v": Fused("attn.c_attn", "thirds", 2),
            "attn.o": "attn.c_proj",
            "mlp.up": "mlp.c_fc",
            "mlp.down": "mlp.c_proj",
            "norm.in": "ln_1",
            "norm.post": "ln_2",
        },
        layers="h",
        embed=("wte", "wpe"),
        norm_final="ln_f",
        conv1d=True,
        split={"attn.c_attn": "colwise", "attn.c_proj": "rowwise", "mlp.c_fc": "colwise", "mlp.c_proj": "rowwise"},
    ),
    # query_key_value is interleaved per head ([heads, 3, head_dim]): q/k/v are not
    # contiguous, so it is one module.
    "gpt_neox": Family(
        {
            "attn.qkv": "attention.query_key_value",
            "attn.o": "attention.dense",
            "mlp.up": "mlp.dense_h_to_4h",
            "mlp.down": "mlp.dense_4h_to_h",
            "norm.in": "input_layernorm",
            "norm.post": "post_attention_layernorm",
        },
        embed=("embed_in",),
        norm_final="final_layer_norm",
        head="embed_out",
    ),
}
LISTED_FAMILIES = tuple(FAMILIES)

# Inference for unlisted families: usual leaf names of layer modules.
_LEAF_ALIASES = {
    "q_proj": "attn.q",
    "k_proj": "attn.k",
    "v_proj": "attn.v",
    "o_proj": "attn.o",
    "out_proj": "attn.o",
    "qkv_proj": "attn.qkv",
    "query_key_value": "attn.qkv",
    "c_attn": "attn.qkv",
    "Wqkv": "attn.qkv",
    "wqkv": "attn.qkv",
    "gate_proj": "mlp.gate",
    "up_proj": "mlp.up",
    "down_proj": "mlp.down",
    "w1": "mlp.gate",
    "w3": "mlp.up",
    "w2": "mlp.down",
    "fc1": "mlp.up",
    "fc2": "mlp.down",
    "c_fc": "mlp.up",
    "dense_h_to_4h": "mlp.up",
    "dense_4h_to_h": "mlp.down",
    "input_layernorm": "norm.in",
    "ln_1": "norm.in",
    "attention_norm": "norm.in",
    "post_attention_layernorm": "norm.post",
    "ln_2": "norm.post",
    "ffn_norm": "norm.post",
}
_CONTEXT_LEAVES = ("c_proj", "dense", "wo")  # attn.o under attention, mlp.down under an MLP
_MLP_PARENTS = ("mlp", "ffn", "feed_forward", "feedforward")
_EMBED_NAMES = ("embed_tokens", "wte", "wpe", "embed_in", "word_embeddings", "tok_embeddings")
_NORM_FINAL_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")
_HEAD_NAMES = ("lm_head", "embed_out", "output")
_BUFFER_SUFFIXES = ("inv_freq", "masked_bias", "attn.bias", "_float_tensor")
_COLWISE_BY_DEFAULT = ("attn.q", "attn.k", "attn.v", "attn.qkv", "mlp.gate", "mlp.up")
_ROWWISE_BY_DEFAULT = ("attn.o", "mlp.down")
