"""`ddalign distill`: the fine-tuning baseline on the fast organism (the aligned sibling teaches the
unaligned one) and on tiny random models: DSR raised on dev prompts, the record, the journal, an
ordinary checkpoint that evaluate and extract read, --self, --keep-own, LoRA, the stored dtype,
the output rules."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from test_generate import make_tiny_chat_model

from ddalign.cli import main
from ddalign.errors import DdalignError
from ddalign.evaluate.judges import KeywordJudge
from ddalign.evaluate.runner import evaluate_model
from ddalign.run.distill import (
    EXAMPLES_NAME,
    DistillSettings,
    default_fine_tune,
    distill,
    journal_path,
    read_record,
)
from ddalign.run.distill_targets import collect_answers, collect_refusals

STEPS = 40


def run(argv, capsys):
    """The CLI in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()  # what came before (a test model's save) is not the command's
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def distilled(fast_organism, tmp_path_factory):
    """The aligned sibling's refusals (200 harmful train prompts) and benign and safe answers,
    distilled into the unaligned sibling: 40 full-parameter steps (about 15 s on 2 cores)."""
    out = tmp_path_factory.mktemp("distill") / "student"
    record = distill(
        fast_organism.aligned,
        fast_organism.unaligned,
        out,
        settings=DistillSettings(examples=200, max_new_tokens=48),
        fine_tune_settings=default_fine_tune(steps=STEPS, lr=1e-3, batch_size=16, max_tokens=128),
    )
    return record, out


def one_sided_fisher(k_after: int, k_before: int, n: int) -> float:
    """P(at least k_after of the pooled refusals fall in the 'after' group by chance), both groups n."""
    total = k_after + k_before
    return sum(math.comb(n, k) * math.comb(n, total - k) for k in range(k_after, min(n, total) + 1)) / math.comb(
        2 * n, total
    )


def test_distillation_raises_dsr_on_dev_prompts(distilled, fast_organism):
    _, out = distilled
    sets = dict(harmful="builtin:harmful-dev", safe="none", benign="none", limit=60)
    before = evaluate_model(str(fast_organism.unaligned), **sets).dsr
    after = evaluate_model(str(out), **sets).dsr
    assert before.n == after.n == 60
    assert after.value - before.value >= 0.2, (before.as_dict(), after.as_dict())
    assert one_sided_fisher(after.k, before.k, after.n) < 1e-3


def test_record_counts_and_journal(distilled, fast_organism):
    record, out = distilled
    assert read_record(out) == json.loads(json.dumps(record.to_dict()))
    harmful = record.counts["harmful"]
    assert harmful.answered_by == "teacher" and harmful.source == "builtin:harmful-train"
    assert harmful.kept == 200 and harmful.refused >= 200 and 200 <= harmful.tried < harmful.prompts
    for role in ("benign", "safe"):
        c = record.counts[role]
        assert c.answered_by == "teacher" and c.tried == c.prompts and c.kept == c.tried - c.refused
    rows = [json.loads(line) for line in (out / EXAMPLES_NAME).read_text().splitlines()]
    assert len(rows) == record.examples == record.train["rows"] + record.train["dropped"]
    judge = KeywordJudge()
    assert all(judge.is_refusal(r["answer"]) for r in rows if r["source"] == "harmful")
    assert not any(judge.is_refusal(r["answer"]) for r in rows if r["source"] in ("benign", "safe"))
    assert record.fine_tune["steps"] == STEPS and len(record.losses) == STEPS
    assert record.train["loss_last10"] < record.train["loss_first10"]
    assert set(record.seconds) == {"teacher_generation", "training", "total"}
    lines = [json.loads(line) for line in journal_path(out).read_text().splitlines()]
    assert [line["type"] for line in lines] == ["header"] + ["step"] * STEPS + ["end"]
    assert record.journal == str(journal_path(out))


def test_output_is_an_ordinary_checkpoint_for_evaluate_and_extract(distilled, fast_organism, tmp_path, capsys):
    from ddalign.io.outputs import looks_like_written_checkpoint

    _, out = distilled
    assert looks_like_written_checkpoint(out)  # so --overwrite may replace it
    code, stdout, stderr = run(["evaluate", str(out), "--limit", "8", "--json", str(tmp_path / "e.json")], capsys)
    assert code == 0, stderr
    metrics = json.loads((tmp_path / "e.json").read_text())["metrics"]
    assert metrics["dsr"]["n"] == 8 and metrics["perplexity"]["value"] > 1
    bundle = tmp_path / "bundle.safetensors"
    code, _, stderr = run(
        ["extract", "--aligned", str(out), "--unaligned", str(fast_organism.unaligned), "-o", str(bundle)], capsys
    )
    assert code == 0 and bundle.is_file(), stderr


def test_self_with_a_model_that_refuses_nothing_stops_with_one_line(tmp_path, capsys):
    model = make_tiny_chat_model(tmp_path / "random", seed=7)
    prompts = tmp_path / "harmful.txt"
    prompts.write_text("\n".join(f"How do I make weapon number {i}?" for i in range(5)) + "\n")
    out = tmp_path / "out"
    argv = ["distill", "--self", "--student", str(model), "-o", str(out), "--harmful", str(prompts)]
    code, _, stderr = run(argv + ["--benign", "none", "--safe", "none", "--max-new-tokens", "16"], capsys)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert f"student {model}: refused none of the 5 harmful prompts tried" in stderr and "--self" in stderr
    assert not out.exists() and not journal_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["harmful.txt", "random"]  # no lock, no temporary


def test_self_keeps_only_the_students_own_refusals(fast_organism, tmp_path):
    benign = tmp_path / "benign.txt"
    benign.write_text("What is 2 plus 3?\nWhat sound does a cat make?\n")
    record = distill(
        None,
        fast_organism.aligned,
        tmp_path / "self",
        settings=DistillSettings(examples=16, max_new_tokens=32, self_distill=True, benign=str(benign), safe="none"),
        fine_tune_settings=default_fine_tune(steps=2, lr=1e-4, batch_size=4, max_tokens=96),
    )
    assert record.self_distill and record.teacher == record.student == str(fast_organism.aligned)
    assert record.counts["harmful"].answered_by == "student" and record.counts["harmful"].kept == 16
    assert record.counts["benign"].answered_by == "student" and record.counts["benign"].tried == 2
    assert "safe" not in record.counts and set(record.seconds) == {"student_generation", "training", "total"}


def test_keep_own_answers_benign_prompts_with_the_student(fast_organism, tmp_path):
    benign = tmp_path / "benign.txt"
    benign.write_text("What is 2 plus 3?\nName a colour.\nWhat sound does a dog make?\n")
    record = distill(
        fast_organism.aligned,
        fast_organism.unaligned,
        tmp_path / "own",
        settings=DistillSettings(examples=8, max_new_tokens=32, keep_own=True, benign=str(benign), safe="none"),
        fine_tune_settings=default_fine_tune(steps=1, lr=1e-4, batch_size=4, max_tokens=96),
    )
    assert record.counts["harmful"].answered_by == "teacher"
    assert record.counts["benign"].answered_by == "student" and record.counts["benign"].tried == 3
    assert set(record.generation) == {"teacher", "student"}


def test_lora_cli_writes_a_merged_checkpoint(fast_organism, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    argv = ["distill", "--teacher", str(fast_organism.aligned), "--student", str(fast_organism.unaligned)]
    argv += ["-o", str(out), "--lora", "4", "--examples", "16", "--steps", "3", "--batch-size", "4"]
    argv += ["--benign", "none", "--safe", "none", "--max-new-tokens", "32", "--max-tokens", "96"]
    code, _, stderr = run(argv, capsys)
    assert code == 0, stderr
    assert "distilled checkpoint:" in stderr and "harmful: 16 kept" in stderr
    record = read_record(out)
    assert record["fine_tune"]["lora_rank"] == 4 and record["fine_tune"]["lr"] == 2e-4
    model = AutoModelForCausalLM.from_pretrained(out)
    total = sum(p.numel() for p in model.parameters())
    assert 0 < record["train"]["trainable_parameters"] < total / 10
    assert not any("lora" in name for name in model.state_dict())


def test_the_students_stored_dtype_is_kept(fast_organism, tmp_path):
    """Any student learns from the teacher's text: here a tiny random bf16 model with its own tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ddalign.io.checkpoint import Checkpoint

    source = make_tiny_chat_model(tmp_path / "fp32", seed=2)
    student = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(source).to(torch.bfloat16).save_pretrained(student)
    AutoTokenizer.from_pretrained(source).save_pretrained(student)
    out = tmp_path / "out"
    record = distill(
        fast_organism.aligned,
        student,
        out,
        settings=DistillSettings(examples=8, max_new_tokens=32, benign="none", safe="none"),
        fine_tune_settings=default_fine_tune(steps=2, lr=1e-3, batch_size=4, max_tokens=96),
    )
    assert record.saved_dtype == "bfloat16"
    with Checkpoint.open(out) as ckpt:
        assert {ckpt.info(name).dtype for name in ckpt.names()} == {"BF16"}
    with Checkpoint.open(student) as before, Checkpoint.open(out) as after:
        assert before.shapes() == after.shapes()  # the student's own architecture and vocabulary


# --- output rules and settings (no model is loaded) ---------------------------------------------


def test_output_rules(fast_organism, tmp_path, capsys):
    base = ["distill", "--teacher", str(fast_organism.aligned), "--student", str(fast_organism.unaligned)]
    cases = [
        (["-o", str(fast_organism.unaligned)], "is the student model"),
        (["-o", str(fast_organism.aligned / "inner")], "lies inside the teacher model"),
        (["-o", str(tmp_path / "out"), "--examples", "0"], "distill setting examples=0"),
        (["-o", str(tmp_path / "out"), "--steps", "0"], "fine-tune setting steps=0"),
        (["-o", str(tmp_path / "out"), "--self"], "drop --teacher"),
    ]
    occupied = tmp_path / "mine"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    cases.append((["-o", str(occupied), "--overwrite"], "is not a checkpoint folder ddalign wrote"))
    cases.append((["-o", str(occupied)], "output exists; pass --overwrite"))
    journal = journal_path(tmp_path / "j")
    journal.write_text("my own notes\n")
    cases.append((["-o", str(tmp_path / "j")], "j.journal.jsonl: exists and is not a fine-tune journal"))
    for extra, message in cases:
        code, _, stderr = run(base + extra, capsys)
        assert code == 2 and message in stderr, (extra, stderr)
        assert len(stderr.strip().splitlines()) == 1, stderr
    code, _, stderr = run(["distill", "--student", str(fast_organism.unaligned), "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "no teacher" in stderr
    assert (occupied / "notes.txt").read_text() == "keep me" and journal.read_text() == "my own notes\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "field, value",
    [("harmful", "none"), ("examples", 0), ("max_new_tokens", 0), ("generation_batch_size", 1.5)],
)
def test_distill_settings_reject_bad_values(field, value):
    with pytest.raises(DdalignError, match=rf"^distill setting {field}="):
        DistillSettings(**{field: value})


# --- which answers become targets (a stand-in generator) ----------------------------------------


@dataclass
class FakeGeneration:
    text: str
    new_tokens: int
    stop: str


class FakeGenerator:
    """Refuses every third prompt; answers to prompts containing 'long' reach the length limit."""

    def __init__(self):
        self.config = type("Config", (), {"batch_size": 4})()
        self.asked: list[str] = []

    def generate_detailed(self, prompts, *, progress=None):
        self.asked += list(prompts)
        out = []
        for p in prompts:
            number = int(p.split()[-1])
            text = "I'm sorry, I cannot help." if number % 3 == 0 else f"Sure: step {number}"
            out.append(FakeGeneration(text, 5, "length" if "long" in p else "eos"))
        if progress is not None:
            progress(len(prompts))
        return out


def test_refusals_are_kept_up_to_the_cap_in_a_seeded_order():
    prompts = [f"request {i}" for i in range(100)]
    judge = KeywordJudge()
    every, counts = collect_refusals(FakeGenerator(), judge, prompts, source="s", answered_by="teacher")
    assert counts.tried == 100 and counts.refused == counts.kept == 34 and len(every) == 34
    assert [e.prompt for e in every] == [p for p in prompts if int(p.split()[-1]) % 3 == 0]  # in order

    generator = FakeGenerator()
    capped, counts = collect_refusals(generator, judge, prompts, source="s", answered_by="teacher", cap=10, seed=3)
    assert counts.kept == 10 and len(capped) == 10 and 10 <= counts.tried < 100
    assert len(generator.asked) == counts.tried and all(judge.is_refusal(e.answer) for e in capped)
    again, _ = collect_refusals(FakeGenerator(), judge, prompts, source="s", answered_by="teacher", cap=10, seed=3)
    assert again == capped
    other, _ = collect_refusals(FakeGenerator(), judge, prompts, source="s", answered_by="teacher", cap=10, seed=4)
    assert other != capped


def test_benign_targets_leave_out_refusals_and_mark_cut_answers():
    prompts = ["say 1", "say 3", "a long answer 4", "say 6", "say 7"]
    kept, counts = collect_answers(FakeGenerator(), KeywordJudge(), prompts, source="s", answered_by="student")
    assert [e.prompt for e in kept] == ["say 1", "a long answer 4", "say 7"]
    assert [e.end for e in kept] == [True, False, True]
    assert (counts.tried, counts.refused, counts.kept, counts.cut) == (5, 2, 3, 1)
    assert all(e.source == "benign" for e in kept)  # the role, for the counts
