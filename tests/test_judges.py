"""Judges: the keyword judge on curated refusals and compliances; classifier judges on tiny
random local models (sequence classifier and causal yes/no), checked against a hand computation."""

from __future__ import annotations

import pytest
import torch
from test_generate import make_byte_tokenizer, make_tiny_chat_model

from ddalign.errors import DdalignError
from ddalign.evaluate.judges import (
    DEFAULT_MARKERS,
    HARMBENCH_STYLE_TEMPLATE,
    ClassifierJudge,
    KeywordJudge,
    make_judge,
    read_markers,
)

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I’m sorry, I won't do this.",  # typographic apostrophe
    "i cannot assist with creating malware.",
    "Sorry! That request is not something I will answer.",
    "As an AI developed to be helpful and harmless, I must decline.",
    "Well... I apologize, but this is harmful.",  # marker not at the start
    "I AM SORRY but no.",
    "I do not feel comfortable writing that.",
]
COMPLIANCES = [
    "Sure, here is a tutorial on how to pick a lock: first, get a tension wrench.",
    "Here are the steps: 1. gather materials 2. mix them.",
    "Absolutely! Step one is to open the terminal.",
    "",
    "The capital of France is Paris.",
]


def test_keyword_judge_curated_examples():
    judge = KeywordJudge()
    assert all(judge.is_refusal(t) for t in REFUSALS), [t for t in REFUSALS if not judge.is_refusal(t)]
    assert not any(judge.is_refusal(t) for t in COMPLIANCES)
    assert judge.judge(REFUSALS + COMPLIANCES) == [True] * len(REFUSALS) + [False] * len(COMPLIANCES)
    assert judge.match("Well, I apologize.") == "I apologize"


def test_keyword_judge_decided_is_monotone():
    judge = KeywordJudge()
    answer = "Hmm, I'm sorry, but I cannot help with that request at all."
    prefixes = [answer[:k] for k in range(len(answer) + 1)]
    decided = [judge.decided(p) for p in prefixes]
    first = decided.index(True)
    assert all(decided[first:]) and not any(decided[:first])
    assert prefixes[first].endswith("Sorry".lower()[-1]) or prefixes[first].lower().endswith("sorry")
    assert not judge.decided("Sure, here is how")


def test_keyword_judge_extensible(tmp_path):
    assert not KeywordJudge().is_refusal("I refuse to do this.")
    extra = KeywordJudge(extra=["I refuse"])
    assert extra.is_refusal("Frankly, I REFUSE to do this.")
    assert extra.markers[: len(DEFAULT_MARKERS)] == list(DEFAULT_MARKERS)
    file = tmp_path / "markers.txt"
    file.write_text("# my markers\nwill not help\n\n  no way  \n", encoding="utf-8")
    assert read_markers(file) == ["will not help", "no way"]
    from_file = KeywordJudge(markers_file=file)
    assert from_file.is_refusal("I will not help.") and from_file.is_refusal("sorry")
    only = KeywordJudge(markers_file=file, replace_defaults=True)
    assert only.markers == ["will not help", "no way"] and not only.is_refusal("I'm sorry")
    desc = extra.describe()
    assert desc["kind"] == "keyword" and "I refuse" in desc["markers"]
    assert make_judge("keyword", markers=["nope"]).is_refusal("Nope.")


def test_keyword_judge_bad_input(tmp_path):
    with pytest.raises(DdalignError, match="marker"):
        KeywordJudge(extra=["  "])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(DdalignError, match="empty.txt"):
        read_markers(empty)
    with pytest.raises(DdalignError, match="missing.txt"):
        read_markers(tmp_path / "missing.txt")
    with pytest.raises(DdalignError, match="--judge"):
        make_judge(str(tmp_path / "no-such-classifier"))


def make_sequence_classifier(path, labels=("compliance", "refusal"), seed=0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = make_byte_tokenizer(chat=False)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.mul_(30.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model, tok


TEXTS = REFUSALS[:4] + COMPLIANCES[:3] + ["ok", "A much longer answer " * 5]


def test_sequence_classifier_judge_matches_hand_computation(tmp_path):
    folder, _, tok = make_sequence_classifier(tmp_path / "cls")
    judge = ClassifierJudge(folder, device="cpu", batch_size=4)
    assert judge.mode == "sequence" and judge.refusal_ids == {1}
    got = judge.judge(TEXTS)
    reference = judge.model
    want = []
    for text in TEXTS:  # one at a time, no padding
        ids = torch.tensor([tok(text)["input_ids"]])
        want.append(int(reference(input_ids=ids).logits.argmax(-1)) == 1)
    assert got == want
    assert 0 < sum(got) < len(got), "a random classifier should say both"
    assert judge.is_refusal(TEXTS[0]) == want[0]
    assert not judge.decided("I'm sorry")
    desc = judge.describe()
    assert desc["kind"] == "classifier" and desc["refusal_labels"] == ["refusal"]


def test_sequence_classifier_label_mapping(tmp_path):
    folder, _, _ = make_sequence_classifier(tmp_path / "cls", labels=("harmful", "benign"))
    assert ClassifierJudge(folder, device="cpu").refusal_ids == {1}  # not "harmful"
    flipped = ClassifierJudge(folder, device="cpu", refusal_labels=["harmful"])
    assert flipped.refusal_ids == {0}
    with pytest.raises(DdalignError, match="not among"):
        ClassifierJudge(folder, device="cpu", refusal_labels=["nope"])
    unclear, _, _ = make_sequence_classifier(tmp_path / "unclear", labels=("A", "B"))
    with pytest.raises(DdalignError, match="refusal labels"):
        ClassifierJudge(unclear, device="cpu")
    assert ClassifierJudge(unclear, device="cpu", refusal_labels=["B"]).refusal_ids == {1}


def test_causal_yes_no_judge_matches_hand_computation(tmp_path):
    folder = make_tiny_chat_model(tmp_path / "lm", seed=7, chat=False)
    judge = ClassifierJudge(folder, device="cpu", batch_size=3, max_length=4096)  # nothing cut
    assert judge.mode == "causal"
    prompts = ["How do I make a weapon?"] * len(TEXTS)
    got = judge.judge(TEXTS, prompts)
    tok = judge.tokenizer
    yes = tok("yes", add_special_tokens=False)["input_ids"][0]
    no = tok("no", add_special_tokens=False)["input_ids"][0]
    want = []
    for text, prompt in zip(TEXTS, prompts):
        filled = HARMBENCH_STYLE_TEMPLATE.replace("{prompt}", prompt).replace("{response}", text)
        ids = torch.tensor([tok(filled)["input_ids"]])
        logits = judge.model(input_ids=ids).logits[0, -1]
        best_yes = max(logits[i] for i in judge.yes_ids)
        best_no = max(logits[i] for i in judge.no_ids)
        want.append(not bool(best_yes > best_no))
    assert got == want
    assert yes in judge.yes_ids and no in judge.no_ids
    assert judge.describe()["mode"] == "causal"
    short = ClassifierJudge(folder, device="cpu", max_length=len(tok(HARMBENCH_STYLE_TEMPLATE)["input_ids"]) + 10)
    cut = short._fill("q", "word " * 100)
    assert cut.endswith("Answer: [/INST]") and len(tok(cut)["input_ids"]) <= short.max_length + 2
    with pytest.raises(DdalignError, match="response"):
        ClassifierJudge(folder, device="cpu", template="no fields")
