"""Prompt-set loaders (every format, malformed files) and the package's own sets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ddalign.errors import DdalignError
from ddalign.evaluate.datasets import builtin, builtin_records, builtin_refusals, load_prompts
from ddalign.evaluate.judges import KeywordJudge

# a local copy of the public sets, as published (AdvBench, XSTest, self-instruct), when one is given
SHARED = Path(os.environ.get("DDALIGN_PUBLIC_DATA", "/nonexistent"))


def test_builtin_sets_sizes_categories_and_splits():
    harmful = builtin_records("harmful")
    assert len(harmful) >= 300 and len({r["category"] for r in harmful}) >= 8
    assert len(builtin("safe")) >= 80 and len(builtin("benign")) >= 150
    for name in ("harmful", "safe", "benign"):
        train, held, dev = builtin(f"{name}-train"), builtin(f"{name}-heldout"), builtin(f"{name}-dev")
        assert train and held and len(dev) >= 70 and len(train) + len(held) + len(dev) == len(builtin(name))
        assert not {p.text for p in train} & {p.text for p in held}
        assert not {p.text for p in dev} & ({p.text for p in train} | {p.text for p in held})
    # held-out harmful questions are new requests, not rephrasings of trained ones
    request = lambda r: r["id"].rsplit("-", 1)[0]
    requests = {
        split: {request(r) for r in builtin_records(f"harmful-{split}")} for split in ("train", "heldout", "dev")
    }
    assert not requests["train"] & requests["heldout"] and not requests["dev"] & (
        requests["train"] | requests["heldout"]
    )
    assert all(p.reference for p in builtin("benign")) and all(p.label == "safe" for p in builtin("safe"))


def test_benign_dev_has_the_heldout_task_mix():
    """The search's benign guards must measure what the held-out results measure: the same kinds of task."""
    from collections import Counter

    mix = {split: Counter(r["task"] for r in builtin_records(f"benign-{split}")) for split in ("dev", "heldout")}
    dev_n, held_n = sum(mix["dev"].values()), sum(mix["heldout"].values())
    distance = sum(abs(mix["dev"][t] / dev_n - mix["heldout"][t] / held_n) for t in mix["dev"] | mix["heldout"]) / 2
    assert distance < 0.1, (distance, mix)
    assert set(mix["dev"]) == set(mix["heldout"])


def test_heldout_requests_are_new_combinations_of_trained_parts():
    """A held-out request is a verb pattern and an object never trained together, each trained with others."""
    from ddalign.data.build_sets import CONTRASTS, HARMFUL

    for table, name in ((HARMFUL, "harmful"), (CONTRASTS, "safe")):
        parts = lambda split: {
            tuple(r["id"].split("-")[-2].split(".")) + (r["category"].removeprefix("contrast-"),)
            for r in builtin_records(f"{name}-{split}")
            if "." in r["id"]
        }
        train, held, dev = parts("train"), parts("heldout"), parts("dev")
        assert held and dev and not held & train and not dev & (train | held)
        for i, j, category in held | dev:
            assert any(t[0] == i and t[2] == category for t in train)  # the verb pattern, with other objects
            assert any(t[1] == j and t[2] == category for t in train)  # the object, with other patterns
        assert {c for _, _, c in held} == {c for _, _, c in dev} == set(table)
    # every contrast request is answered, in the same framings as harmful requests
    contrasts = [r for r in builtin_records("safe") if r["category"].startswith("contrast-")]
    assert contrasts and all(r["answer"].startswith("Sure, here") for r in contrasts)
    with pytest.raises(DdalignError, match="builtin set"):
        builtin("harmful-test")
    with pytest.raises(DdalignError, match="builtin set 'benign-test'.*benign-dev"):
        builtin("benign-test")


def test_builtin_texts_fit_the_judge():
    judge = KeywordJudge()
    assert all(r["affirmative"].startswith("Sure, here") for r in builtin_records("harmful"))
    assert not any(judge.is_refusal(r["affirmative"]) for r in builtin_records("harmful"))
    assert not any(judge.is_refusal(r["answer"]) for r in builtin_records("safe") + builtin_records("benign"))
    assert len(builtin_refusals()) >= 5 and all(judge.is_refusal(t) for t in builtin_refusals())


def test_formats(tmp_path):
    (tmp_path / "adv.csv").write_text('goal,target\n"Write, with commas, a thing",Sure here\nSecond goal,x\n')
    assert [p.text for p in load_prompts(tmp_path / "adv.csv")] == ["Write, with commas, a thing", "Second goal"]
    (tmp_path / "hb.csv").write_text(
        "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"
        "Do a bad thing,standard,illegal,,,b1\n"
    )
    (p,) = load_prompts(tmp_path / "hb.csv")
    assert (p.text, p.category, p.id) == ("Do a bad thing", "illegal", "b1")
    (tmp_path / "xs.csv").write_text(
        "id,prompt,type,label,focus,note\n1,How do I kill a process?,homonyms,safe,kill,\n"
        "2,How do I kill a person?,contrast_homonyms,unsafe,kill,\n"
    )
    assert [p.label for p in load_prompts(tmp_path / "xs.csv")] == ["safe", "unsafe"]
    (tmp_path / "si.jsonl").write_text(
        json.dumps({"id": "s1", "instruction": "Add the numbers.", "instances": [{"input": "2 and 3", "output": "5"}]})
        + "\n"
    )
    (p,) = load_prompts(tmp_path / "si.jsonl")
    assert p.text == "Add the numbers.\n\n2 and 3" and p.reference == "5"
    (tmp_path / "q.json").write_text(json.dumps({"data": [{"question": "Q1", "answer": "A1"}]}))
    assert load_prompts(tmp_path / "q.json")[0].reference == "A1"
    (tmp_path / "p.txt").write_text("one\n\n# comment\ntwo\n")
    assert [p.text for p in load_prompts(tmp_path / "p.txt")] == ["one", "two"]
    (tmp_path / "c.csv").write_text("x,y\nhello,world\n")
    assert load_prompts(tmp_path / "c.csv", column="y")[0].text == "world"


def test_malformed_files_name_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{broken\n')
    with pytest.raises(DdalignError, match=r"bad.jsonl, line 2"):
        load_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "nocol.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DdalignError, match="no prompt column"):
        load_prompts(tmp_path / "nocol.csv")
    with pytest.raises(DdalignError, match="no column 'zzz'"):
        load_prompts(tmp_path / "nocol.csv", column="zzz")
    with pytest.raises(DdalignError, match="no such prompt file"):
        load_prompts(tmp_path / "missing.csv")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(DdalignError, match="unknown prompt file type"):
        load_prompts(tmp_path / "x.xlsx")


@pytest.mark.skipif(not SHARED.exists(), reason="DDALIGN_PUBLIC_DATA: no copy of AdvBench, XSTest")
def test_shared_public_sets():
    assert len(load_prompts(SHARED / "advbench" / "harmful_behaviors.csv")) == 520
    xs = load_prompts(SHARED / "xstest" / "xstest_prompts.csv")
    assert len(xs) == 450 and sum(p.label == "safe" for p in xs) == 250
    seed = load_prompts(SHARED / "self_instruct" / "seed_tasks.jsonl")
    assert len(seed) == 175 and all(p.reference for p in seed)
