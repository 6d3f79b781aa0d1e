"""Generation: batched greedy decoding with a KV cache equals plain `model.generate` greedy,
row by row, whatever the batch size and padding; per-row stops keep exact prefixes."""

from __future__ import annotations

import json

import pytest
import torch

from ddalign.errors import DdalignError
from ddalign.evaluate.generate import (
    DEFAULT_TEMPLATE,
    GenerationConfig,
    Generator,
    auto_device_dtype,
    load_model,
    parse_dtype,
)

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

PROMPTS = [
    "How do I bake bread?",
    "hi",
    "Write a poem about the sea and the sky above it.",
    "Name three colours.",
    "What is 2+2?",
    "x",
    "Tell me a story about a dragon who lost its fire.",
]


def make_byte_tokenizer(*, chat: bool = True):
    """A byte-level tokenizer with no merges (one token per byte): built offline, any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def make_tiny_chat_model(
    path, *, seed: int = 0, chat: bool = True, layers: int = 2, hidden: int = 32, eos_bias: float = 0.0
):
    """A tiny random Llama + byte tokenizer saved to `path` (no hub). `eos_bias` raises the EOS
    logit so that some rows stop early."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_byte_tokenizer(chat=chat)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # peaked logits: no near-ties in argmax
        if eos_bias:
            model.lm_head.weight[tok.eos_token_id] += eos_bias * model.lm_head.weight.std()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_chat_model(tmp_path_factory.mktemp("gen") / "m", seed=3)
    return load_model(folder, device="cpu", dtype="float32")


def reference_greedy(model, tokenizer, generator, prompt, max_new_tokens):
    """Plain `model.generate(do_sample=False)`, one prompt at a time (no padding)."""
    ids = torch.tensor([generator.encode(prompt)])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[0, ids.shape[1] :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return tokenizer.decode(new, skip_special_tokens=True)


def test_greedy_equals_model_generate_row_by_row(tiny):
    model, tok = tiny
    gen = Generator(model, tok, GenerationConfig(max_new_tokens=12, batch_size=4))
    got = gen.generate(PROMPTS)
    want = [reference_greedy(model, tok, gen, p, 12) for p in PROMPTS]
    assert got == want
    assert len(set(got)) > 1  # the model is not degenerate


@pytest.mark.parametrize("batch_size", [1, 2, 3, 16])
def test_independent_of_batch_size(tiny, batch_size):
    model, tok = tiny
    base = Generator(model, tok, GenerationConfig(max_new_tokens=10, batch_size=7)).generate(PROMPTS)
    other = Generator(model, tok, GenerationConfig(max_new_tokens=10, batch_size=batch_size)).generate(PROMPTS)
    assert other == base


def test_kv_cache_goes_under_the_name_the_installed_forward_takes(tiny):
    """transformers 5.x renamed past_key_values -> cache (the old name warns, then goes): the
    generator passes the name the model's forward declares, never a deprecated one beside it."""
    import inspect

    model, tok = tiny
    params = inspect.signature(model.forward).parameters
    expected = "cache" if "cache" in params else "past_key_values"
    seen: list[set[str]] = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(set(kwargs)), with_kwargs=True)
    try:
        out = Generator(model, tok, GenerationConfig(max_new_tokens=4, batch_size=7)).generate(PROMPTS)
    finally:
        hook.remove()
    assert seen and all(expected in keys for keys in seen)
    assert not any({"cache", "past_key_values"} <= keys for keys in seen)
    assert out == Generator(model, tok, GenerationConfig(max_new_tokens=4, batch_size=1)).generate(PROMPTS)


def test_padding_against_left_padded_model_generate(tiny):
    """Batched with padding == transformers' own batched greedy with left padding."""
    model, tok = tiny
    gen = Generator(model, tok, GenerationConfig(max_new_tokens=8, batch_size=8))
    rows = [gen.encode(p) for p in PROMPTS]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = model.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=8, pad_token_id=tok.pad_token_id
    )
    want = []
    for row in out[:, width:].tolist():
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id)]
        want.append(tok.decode(row, skip_special_tokens=True))
    assert gen.generate(PROMPTS) == want


def test_stop_when_gives_prefixes_and_saves_tokens(tiny):
    model, tok = tiny
    full_gen = Generator(model, tok, GenerationConfig(max_new_tokens=16, batch_size=3))
    full = full_gen.generate_detailed(PROMPTS)
    stopper = Generator(model, tok, GenerationConfig(max_new_tokens=16, batch_size=3))
    short = stopper.generate_detailed(PROMPTS, stop_when=lambda text: len(text) >= 5)
    for f, s in zip(full, short):
        assert f.text.startswith(s.text)
        if s.stop == "stop_when":
            assert len(s.text) >= 5 and s.new_tokens <= f.new_tokens
    assert any(s.stop == "stop_when" for s in short)
    assert stopper.stats.new_tokens < full_gen.stats.new_tokens
    # Per-row stops: only the first prompt is cut short.
    rows = [lambda t: True] + [None] * (len(PROMPTS) - 1)
    mixed = Generator(model, tok, GenerationConfig(max_new_tokens=16, batch_size=3)).generate_detailed(
        PROMPTS, stop_when=rows
    )
    assert mixed[0].new_tokens == 1 and mixed[0].stop == "stop_when"
    assert [m.text for m in mixed[1:]] == [f.text for f in full[1:]]


def test_eos_stops_rows_and_is_counted(tmp_path):
    model, tok = load_model(make_tiny_chat_model(tmp_path / "m", seed=5, eos_bias=1.0), device="cpu")
    gen = Generator(model, tok, GenerationConfig(max_new_tokens=20, batch_size=4))
    got = gen.generate_detailed(PROMPTS)
    want = [reference_greedy(model, tok, gen, p, 20) for p in PROMPTS]
    assert [g.text for g in got] == want
    assert any(g.stop == "eos" for g in got), "the EOS bias should end some rows"
    assert gen.stats.new_tokens == sum(g.new_tokens for g in got)
    assert gen.stats.prompts == len(PROMPTS)


def test_deterministic_across_runs(tiny):
    model, tok = tiny
    a = Generator(model, tok, GenerationConfig(max_new_tokens=6)).generate(PROMPTS)
    b = Generator(model, tok, GenerationConfig(max_new_tokens=6)).generate(PROMPTS)
    assert a == b


def test_iter_batches_longest_first_and_order(tiny):
    model, tok = tiny
    gen = Generator(model, tok, GenerationConfig(max_new_tokens=2, batch_size=2))
    seen = []
    for indices, gens in gen.iter_batches(PROMPTS, order=[0, 1, 2, 3]):
        assert len(indices) == len(gens) <= 2
        seen.extend(indices)
    assert sorted(seen) == [0, 1, 2, 3]
    lengths = [len(gen.encode(PROMPTS[i])) for i in seen]
    assert lengths == sorted(lengths, reverse=True)


def test_templates(tmp_path, tiny):
    model, tok = tiny
    chat = Generator(model, tok)
    assert chat.uses_chat_template and chat.render("hey") == "<s><|user|>hey\n<|assistant|>"
    assert chat.encode("hey")[0] == tok.bos_token_id and chat.encode("hey").count(tok.bos_token_id) == 1
    plain = Generator(model, tok, GenerationConfig(template="Q: {prompt}\nA:"))
    assert not plain.uses_chat_template and plain.render("hey") == "Q: hey\nA:"
    m2, tok2 = load_model(make_tiny_chat_model(tmp_path / "nochat", chat=False), device="cpu")
    fallback = Generator(m2, tok2)
    assert fallback.render("hey") == DEFAULT_TEMPLATE.format(prompt="hey")
    assert fallback.describe()["template"] == DEFAULT_TEMPLATE
    with pytest.raises(DdalignError, match="chat template"):
        Generator(m2, tok2, GenerationConfig(template="chat"))
    with pytest.raises(DdalignError, match="template"):
        GenerationConfig(template="no field")
    with pytest.raises(DdalignError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)


def test_load_model_refuses_bad_folders(tmp_path):
    with pytest.raises(DdalignError, match="not found"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DdalignError, match="config.json"):
        load_model(tmp_path / "empty")
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(DdalignError, match="pickle"):
        load_model(folder)


def test_device_and_dtype_choice():
    device, dtype = auto_device_dtype()
    if torch.cuda.is_available():
        assert device == "cuda" and dtype in (torch.bfloat16, torch.float16)
    else:
        assert (device, dtype) == ("cpu", torch.float32)
    assert auto_device_dtype("cpu", "bf16") == ("cpu", torch.bfloat16)
    assert parse_dtype("auto") is None and parse_dtype("float16") is torch.float16
    with pytest.raises(DdalignError, match="dtype"):
        parse_dtype("int3")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_path(tmp_path):
    model, tok = load_model(make_tiny_chat_model(tmp_path / "m"))
    assert model.device.type == "cuda"
    out = Generator(model, tok, GenerationConfig(max_new_tokens=4)).generate(PROMPTS[:3])
    assert len(out) == 3


def tiny_family_config(family: str, vocab: int):
    import transformers as T

    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    attn = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return {
        "mistral": lambda: T.MistralConfig(num_key_value_heads=2, sliding_window=8, **attn, **common),
        "qwen2": lambda: T.Qwen2Config(num_key_value_heads=2, **attn, **common),
        "gemma2": lambda: T.Gemma2Config(num_key_value_heads=2, head_dim=8, sliding_window=8, **attn, **common),
        "phi3": lambda: T.Phi3Config(num_key_value_heads=2, **attn, **common),
        "gpt_neox": lambda: T.GPTNeoXConfig(**attn, **common),
        "gpt2": lambda: T.GPT2Config(n_embd=32, n_layer=2, n_head=4, **common),
    }[family]()


@pytest.mark.parametrize("family", ["mistral", "qwen2", "gemma2", "phi3", "gpt_neox", "gpt2"])
def test_other_families_and_sliding_window_caches(family):
    """Dropping rows from the cache works for sliding-window caches too (prompts > window 8)."""
    from transformers import AutoModelForCausalLM

    tok = make_byte_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_family_config(family, len(tok))).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)
    gen = Generator(model, tok, GenerationConfig(max_new_tokens=12, batch_size=3))
    want = [reference_greedy(model, tok, gen, p, 12) for p in PROMPTS]
    assert gen.generate(PROMPTS) == want
    stopped = gen.generate(PROMPTS, stop_when=lambda text: len(text) > 6)
    assert all(w.startswith(s) for s, w in zip(stopped, want))
