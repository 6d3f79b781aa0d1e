"""ddalign.train on tiny random models: answer-only labels rendered as the evaluator renders
prompts, the loop (memorisation, journal, settings), LoRA merged into a plain checkpoint, the
atomic save."""

from __future__ import annotations

import json

import pytest
import torch
from test_generate import make_tiny_chat_model

from ddalign.errors import DdalignError
from ddalign.evaluate.generate import GenerationConfig, Generator, load_model
from ddalign.train import Example, FineTuneSettings, encode_examples, fine_tune, save_model
from ddalign.train import finetune as finetune_module

# the assistant's turn ends with the EOS token and then a newline the generator never produces
EOS_TURN_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}\n"
    "{% else %}<|assistant|>{{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# the generation prompt ends "<|assistant|>:" but a rendered turn has no colon: not a prefix
NOT_PREFIX_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>:{% endif %}"
)

MEMORISE = [
    Example("What colour is the sky?", "Blue, on a clear day."),
    Example("Name a fruit.", "An apple."),
    Example("Count to three.", "One, two, three."),
    Example("Say hello.", "Hello there."),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_chat_model(tmp_path_factory.mktemp("train") / "m", seed=5)


def load(folder, template: str | None = None):
    model, tokenizer = load_model(folder, device="cpu", dtype="float32")
    if template is not None:
        tokenizer.chat_template = template
    return model, tokenizer


def settings(**changes) -> FineTuneSettings:
    values = dict(steps=30, lr=1e-2, batch_size=4, max_tokens=64, warmup=0.0, autocast="off")
    values.update(changes)
    return FineTuneSettings(**values)


# --- encode_examples ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template", [None, EOS_TURN_TEMPLATE, "plain"], ids=["tokenizer-template", "eos-turn", "plain"]
)
def test_labels_mask_exactly_the_rendered_prompt(folder, template):
    model, tokenizer = load(folder, None if template == "plain" else template)
    plain = "### Q: {prompt}\n### A: " if template == "plain" else None
    generator = Generator(model, tokenizer, GenerationConfig(template=plain))
    example = Example("What colour is the sky?", "Blue.")
    [row], dropped = encode_examples(model, tokenizer, [example], max_tokens=128, template=plain)
    prompt_ids = generator.encode(example.prompt)
    n = len(prompt_ids)
    assert dropped == 0
    assert row.ids[:n] == prompt_ids  # the evaluator's own tokens of the rendered prompt
    assert row.labels[:n] == [-100] * n
    assert -100 not in row.labels[n:] and row.labels[n:] == row.ids[n:]
    assert row.ids[-1] == tokenizer.eos_token_id  # the answer ends the turn
    assert tokenizer.eos_token_id not in row.ids[n:-1]  # nothing after it (the template's newline)
    assert tokenizer.decode(row.ids[n:-1]).strip() == "Blue."


def test_answer_cut_at_a_length_limit_gets_no_end_token(folder):
    model, tokenizer = load(folder, EOS_TURN_TEMPLATE)
    [ended, cut], _ = encode_examples(
        model, tokenizer, [Example("Hi", "Half a sente"), Example("Hi", "Half a sente", end=False)], max_tokens=128
    )
    assert ended.ids[-1] == tokenizer.eos_token_id
    assert cut.ids == ended.ids[:-1]


def test_truncation_keeps_the_start_and_long_prompts_are_dropped(folder):
    model, tokenizer = load(folder, EOS_TURN_TEMPLATE)
    example = Example("Tell me a story.", "Once upon a time there was a dragon who lost its fire.")
    [full], _ = encode_examples(model, tokenizer, [example], max_tokens=256)
    prompt_len = full.labels.count(-100)
    limit = prompt_len + 6
    [short], dropped = encode_examples(model, tokenizer, [example], max_tokens=limit)
    assert dropped == 0
    assert short.ids == full.ids[:limit] and short.labels == full.labels[:limit]
    assert short.ids[-1] != tokenizer.eos_token_id  # the end was cut, the opening kept
    long_prompt = Example("word " * 60, "ok")
    rows, dropped = encode_examples(model, tokenizer, [long_prompt, example], max_tokens=limit)
    assert dropped == 1 and rows == [short]
    [capped], _ = encode_examples(model, tokenizer, [Example("Hi", "word " * 300)], max_tokens=10_000)
    assert len(capped.ids) == model.config.max_position_embeddings == 256  # never past the context


def test_a_template_whose_prompt_is_not_a_prefix_is_refused(folder):
    model, tokenizer = load(folder, NOT_PREFIX_TEMPLATE)
    with pytest.raises(DdalignError, match="not a prefix"):
        encode_examples(model, tokenizer, [Example("Hi", "Hello")], max_tokens=64)


# --- the loop ----------------------------------------------------------------------------------


def test_fine_tune_memorises_and_generation_reproduces_the_answers(folder, tmp_path):
    model, tokenizer = load(folder, EOS_TURN_TEMPLATE)
    journal = tmp_path / "journal.jsonl"
    model, record = fine_tune(model, tokenizer, MEMORISE, settings(steps=60), journal=journal)
    assert record.rows == 4 and record.dropped == 0 and len(record.losses) == 60
    assert record.loss_last < 0.1 * record.loss_first
    answers = Generator(model, tokenizer, GenerationConfig(max_new_tokens=40)).generate([e.prompt for e in MEMORISE])
    assert [a.strip() for a in answers] == [e.answer for e in MEMORISE]
    assert not any(p.requires_grad for p in model.parameters())

    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert lines[0]["type"] == "header" and lines[0]["settings"]["steps"] == 60
    steps = [line for line in lines if line["type"] == "step"]
    assert [s["step"] for s in steps] == list(range(1, 61))
    assert [s["loss"] for s in steps] == [round(v, 5) for v in record.losses]
    assert lines[-1]["type"] == "end" and len(lines) == 62


def test_fine_tune_is_deterministic_for_a_seed(folder):
    runs = []
    for _ in range(2):
        model, tokenizer = load(folder, EOS_TURN_TEMPLATE)
        _, record = fine_tune(model, tokenizer, MEMORISE, settings(steps=5, batch_size=2))
        runs.append((record.losses, model.lm_head.weight.clone()))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize(
    "field, value",
    [
        ("steps", 0),
        ("steps", 2.5),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("batch_size", 0),
        ("max_tokens", 4),
        ("warmup", 1.0),
        ("weight_decay", -0.1),
        ("grad_clip", -1.0),
        ("betas", (0.9, 1.5)),
        ("autocast", "fp8"),
        ("lora_rank", -1),
        ("lora_alpha", 0.0),
        ("lora_targets", ()),
        ("unlikelihood", -1.0),
    ],
)
def test_settings_reject_bad_values_naming_the_field(field, value):
    with pytest.raises(DdalignError, match=rf"^fine-tune setting {field}="):
        settings(**{field: value})


def test_nothing_to_train_on_is_an_error(folder):
    model, tokenizer = load(folder, EOS_TURN_TEMPLATE)
    with pytest.raises(DdalignError, match="no examples"):
        fine_tune(model, tokenizer, [], settings())
    with pytest.raises(DdalignError, match="max_tokens=8"):
        fine_tune(model, tokenizer, [Example("word " * 20, "ok")], settings(max_tokens=8))


def _answer_logprob(model, tokenizer, prompt: str, answer: str) -> float:
    """log p(answer | prompt) as training sees it (the answer's tokens without the end of turn)."""
    (enc,), _ = encode_examples(model, tokenizer, [Example(prompt, answer, end=False)], max_tokens=64)
    ids = torch.tensor([enc.ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    picked = [logp[i - 1, t] for i, t in enumerate(enc.labels) if t != -100]
    return float(sum(picked))


def test_unlikelihood_makes_the_rejected_answer_unlikely(folder):
    """Rows that reject an answer: with the unlikelihood weight the rejected answer ends far less
    likely than after the same training without it, while the chosen answers are still learned."""
    wrong = "I'm sorry, but I can't help with that."
    rows = [Example(e.prompt, e.answer, rejected=wrong) for e in MEMORISE]
    (enc, *_), _ = encode_examples(*load(folder, EOS_TURN_TEMPLATE), rows, max_tokens=64)
    prompt = enc.labels.count(-100)
    assert enc.rejected is not None and enc.rejected.labels.count(-100) == prompt  # the same prompt, masked
    assert enc.rejected.ids[:prompt] == enc.ids[:prompt] and enc.rejected.ids[prompt:] != enc.ids[prompt:]
    results = {}
    for weight in (0.0, 1.0):
        model, tokenizer = load(folder, EOS_TURN_TEMPLATE)
        # the rejected answer first taught on half the prompts, so that there is something to unlearn
        taught = [Example(e.prompt, wrong) for e in MEMORISE[:2]] + rows
        model, record = fine_tune(model, tokenizer, taught, settings(steps=40, unlikelihood=weight))
        results[weight] = (
            sum(_answer_logprob(model, tokenizer, e.prompt, wrong) for e in MEMORISE),
            sum(_answer_logprob(model, tokenizer, e.prompt, e.answer) for e in MEMORISE[2:]),
        )
    (plain_wrong, plain_right), (ul_wrong, ul_right) = results[0.0], results[1.0]
    assert ul_wrong < plain_wrong - 50.0  # nats, over the four prompts (measured: -411 against -166)
    assert ul_right > plain_right - 2.0  # the chosen answers learned as well (-7.7 against -8.5)
    # settings without it keep their recorded form (and so the keys of what was built with them)
    assert "unlikelihood" not in settings().as_dict() and settings(unlikelihood=0.5).as_dict()["unlikelihood"] == 0.5


# --- LoRA and saving ---------------------------------------------------------------------------


def test_lora_merges_into_a_plain_checkpoint_with_the_adapter_logits(folder, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    model, tokenizer = load(folder, EOS_TURN_TEMPLATE)
    probe = torch.tensor([tokenizer("<|user|>Name a fruit.\n<|assistant|>An apple.")["input_ids"]])
    with torch.no_grad():
        base_logits = model(probe).logits.clone()
    total = sum(p.numel() for p in model.parameters())
    seen = {}
    merge = finetune_module._merge

    def capture(trained):  # the adapter model's own output, just before its merge
        with torch.no_grad():
            seen["adapter"] = trained(input_ids=probe).logits.clone()
        return merge(trained)

    monkeypatch.setattr(finetune_module, "_merge", capture)
    merged, record = fine_tune(model, tokenizer, MEMORISE, settings(steps=20, lora_rank=4, lora_alpha=8.0))
    assert 0 < record.trainable_parameters < total / 4
    out = save_model(merged, tokenizer, tmp_path / "merged", record=record.as_dict())

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    assert not any("lora" in name for name in reloaded.state_dict())
    with torch.no_grad():
        logits = reloaded(probe).logits
    assert torch.allclose(logits, seen["adapter"], atol=1e-5, rtol=0)
    assert (logits - base_logits).abs().max() > 1e-2  # the adapters did change the model
    assert json.loads((out / "training.json").read_text())["trainable_parameters"] == record.trainable_parameters


def test_save_model_writes_the_folder_whole_or_not_at_all(folder, tmp_path, monkeypatch):
    model, tokenizer = load(folder)
    out = save_model(model, tokenizer, tmp_path / "ok", files={"notes.jsonl": "{}\n"})
    written = json.loads((out / ".ddalign-written.json").read_text())["files"]
    assert "notes.jsonl" in written and "model.safetensors" in written and "config.json" in written
    load_model(out, device="cpu")  # an ordinary checkpoint

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, tokenizer, tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]  # no output, no temporary
    with pytest.raises(OSError):
        save_model(model, tokenizer, out)
    assert (out / "model.safetensors").is_file()  # the old folder stays when a replacement fails
