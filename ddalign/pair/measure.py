"""The pair's goals, measured on sets no sibling trained on: AdvBench's held-out part and the
package's held-out harmful prompts (DSR), XSTest's safe prompts (over-refusal), the package's
held-out benign tasks (accuracy, prompt-and-answer perplexity) and held-out self-instruct texts
(plain-text perplexity)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ddalign.evaluate.generate import GenerationConfig, load_model
from ddalign.evaluate.metrics import perplexity_stats
from ddalign.evaluate.runner import evaluate_model, spread
from ddalign.pair.public import PublicData

GENERATION = GenerationConfig(max_new_tokens=32, batch_size=32)


def heldout_sets(public: PublicData, limit: int | None = None) -> dict[str, list[str]]:
    _, advbench = public.advbench_split()
    sets = {"advbench": advbench, "xstest_safe": public.xstest("safe")}
    return {k: spread(v, limit) if limit else v for k, v in sets.items()}


def heldout_texts(public: PublicData) -> list[str]:
    return [t for _, held in public.self_instruct().values() for t in held]


def measure_model(
    model,
    tokenizer,
    public: PublicData,
    *,
    limit: int | None = None,
    patch=None,
    keep_answers: bool = False,
    benign: bool = True,
    package: bool = True,
) -> dict:
    """One model's (optionally patched) numbers on the held-out sets, as a JSON-ready dict; with
    `keep_answers`, every answer and verdict under "samples". `benign` / `package` off leave out
    the benign tasks (accuracy, perplexity) / the package's harmful set, for quick probes."""
    sets = heldout_sets(public, limit)
    main = evaluate_model(
        model,
        tokenizer=tokenizer,
        patch=patch,
        harmful=sets["advbench"],
        safe=sets["xstest_safe"],
        benign=None if benign else "none",
        limit=None,
        config=GENERATION,
        keep_answers=keep_answers,
    )
    if not package:
        out = main.metrics
        out["dsr_advbench"] = out.pop("dsr")
        out["cost"] = {"heldout": main.cost}
        return out
    package = package_dsr(model, tokenizer, patch=patch, limit=limit, keep_answers=keep_answers)
    out = main.metrics
    out["dsr_advbench"] = out.pop("dsr")
    out["dsr_package"] = package.metrics["dsr"]
    out["cost"] = {"heldout": main.cost, "package": package.cost}
    if keep_answers:
        out["samples"] = {
            "advbench": main.samples.get("harmful", []),
            "xstest_safe": main.samples.get("safe", []),
            "package": package.samples.get("harmful", []),
        }
    return out


def package_dsr(model, tokenizer, *, patch=None, limit: int | None = None, keep_answers: bool = False):
    """The evaluation record of the package's held-out harmful set alone."""
    return evaluate_model(
        model,
        tokenizer=tokenizer,
        patch=patch,
        harmful="builtin:harmful-heldout",
        safe="none",
        benign="none",
        limit=limit,
        config=GENERATION,
        keep_answers=keep_answers,
    )


def text_perplexity(model, tokenizer, public: PublicData, patch=None) -> float:
    from contextlib import nullcontext

    applied = nullcontext()
    if patch is not None:
        from ddalign.transfer.apply import patched

        applied = patched(model, patch)
    with applied:
        return perplexity_stats(model, tokenizer, heldout_texts(public)).value


def measure_models(models: Mapping[str, Path], public: PublicData, *, limit: int | None = None, bar=None) -> dict:
    task = None if bar is None else bar.add_task("measure", total=len(models), loss="")
    out = {}
    for name, folder in models.items():
        model, tokenizer = load_model(folder, device="cpu", dtype="float32")
        out[name] = measure_model(model, tokenizer, public, limit=limit)
        out[name]["text_perplexity"] = round(text_perplexity(model, tokenizer, public), 4)
        if task is not None:
            bar.advance(task)
    return out
