"""The model card of a minimal patch: a folder that `huggingface-cli upload` publishes as is.

`write_model_card(run_dir, folder)` writes `folder/README.md` from the run's summary (the models by
Hub id and commit, the oracle's rule, the held-out results with their judge and sets, what was
kept) and puts the patch (a hard link where the file system allows, else a copy) and the report's
plots beside it. `ddalign apply ORG/NAME --to ...` and `ddalign.Patch.load("ORG/NAME")` read the
published repository back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ddalign.errors import DdalignError
from ddalign.transfer.modes import ADD, TRANSPLANT, whole_bundle

CARD = "README.md"
PLOTS = ("trajectory.png", "kept_map.png")
TAGS = ("ddalign", "alignment", "safety", "model-patching", "delta-debugging")
INTRO = (  # a transplant patch, an additive patch
    "A set of parameter blocks from an aligned model that, transplanted into an unaligned sibling (same "
    "architecture, same pretrained base), makes it refuse harmful requests.",
    "The change of an aligned model from its pretrained parent on a set of parameter blocks that, added "
    "to an unaligned sibling (same architecture, same parent), makes it refuse harmful requests.",
)


def _summary(source) -> tuple[dict, Path | None]:
    if isinstance(source, dict):
        return source, None
    run_dir = Path(source)
    path = run_dir / "summary.json"
    if not path.is_file():
        raise DdalignError(f"{run_dir}: no summary.json (is this a finished minimise run folder?)")
    return json.loads(path.read_text()), run_dir


def _hub_ids(summary: dict) -> list[str]:
    """The Hub repositories the patch comes from (the card's `base_model`), unaligned first."""
    models = summary.get("models") or {}
    ids = [((models.get(r) or {}).get("hub") or {}).get("repo_id") for r in ("unaligned", "target", "aligned", "base")]
    return list(dict.fromkeys(i for i in ids if i))


def card_text(summary: dict, *, repo_id: str | None = None, plots: bool = False) -> str:
    """The README.md of a published patch."""
    from ddalign.run.report import METRICS, _cell, model_text
    from ddalign.run.rule import rule_text

    name = repo_id or "ORG/NAME"
    front = ["---", "library_name: ddalign", "tags:", *(f"- {t}" for t in TAGS)]
    bases = _hub_ids(summary)
    if bases:
        front += ["base_model:", *(f"- {b}" for b in bases)]
    front.append("---")
    models = summary.get("models") or {}
    mode = summary.get("mode") or TRANSPLANT
    labels = (
        ("aligned", "aligned model (its change from the parent, added)" if mode == ADD else "aligned model"),
        ("unaligned", "unaligned model (the base the patch was extracted against)"),
        ("base", "common parent (the deltas are the aligned model's change from it)"),
        ("target", "target (the model searched on)"),
    )
    model_rows = [f"- {label}: {model_text(models[role])}" for role, label in labels if models.get(role)]
    if not model_rows:
        model_rows = [f"- target: `{summary.get('target')}`"]
    oracle = summary.get("oracle") or {}
    config, calibration = oracle.get("config") or {}, oracle.get("calibration") or None
    rule = rule_text(config, calibration if calibration and "need" in calibration else None, mode) if config else "-"
    judge = oracle.get("judge") or {}
    judge_text = judge.get("kind", "-")
    if judge.get("path"):
        judge_text += f" `{judge['path']}`" + (f" (commit `{judge['hub']['commit']}`)" if judge.get("hub") else "")
    heldout = (summary.get("data") or {}).get("heldout") or {}
    search = (summary.get("data") or {}).get("search") or {}
    metrics = summary.get("metrics") or {}
    total = summary.get("total_params") or 0
    kept = summary.get("kept") or []
    share = f"{100 * summary['param_share']:.3f}%" if summary.get("param_share") is not None else "-"
    out = front + [
        "",
        f"# {name}: a minimal alignment patch (ddalign)",
        "",
        f"{INTRO[mode == ADD]} Found by delta debugging against a measured oracle with "
        "[ddalign](https://arxiv.org/abs/2406.01514) (DAPA). "
        "The base models' licences apply to the patch: it holds their values.",
        "",
        "## Models",
        "",
        *model_rows,
        "",
        "## Oracle",
        "",
        f"- rule: {rule}",
        f"- judge: {judge_text}",
        f"- search sets: {', '.join(f'{k} `{v}`' for k, v in search.items()) or '-'}",
        f"- search: {summary.get('algorithm', '-')} over {', '.join(summary.get('granularity') or []) or '-'}; "
        f"{summary.get('tests', '-')} oracle tests",
        "",
        "## Held-out results (95% Wilson intervals)",
        "",
        f"Held-out sets: {', '.join(f'{k} `{v}`' for k, v in heldout.items()) or '-'}; judge: {judge_text}.",
        "",
        "| model | " + " | ".join(f"{label} {arrow}" for _, label, arrow in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for label, key in (("target before", "before"), (whole_bundle(mode), "full"), ("minimal patch", "minimal")):
        cells = (_cell(k, (metrics.get(key) or {}).get(k)) for k, _, _ in METRICS)
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    check = summary.get("heldout_check")
    if check:
        from ddalign.run.rule import heldout_text

        text = heldout_text(check, mode)
        out += ["", text[0].upper() + text[1:] + "."]
    out += [
        "",
        "## Parameters kept",
        "",
        f"{len(kept)} component(s), {summary.get('kept_params', 0):,} parameters = {share} of the model ({total:,}):",
        "",
        *(f"- `{c}`" for c in kept),
    ]
    if plots:
        out += ["", "![search trajectory](trajectory.png)", "", "![kept map](kept_map.png)"]
    patch_file = Path(str(summary.get("patch") or "patch.safetensors")).name
    out += [
        "",
        "## Use",
        "",
        "```bash",
        f"ddalign apply {name} --to YOUR-FINE-TUNE -o patched/      # the unaligned model above, or --allow-other-base",
        "ddalign evaluate patched/",
        "```",
        "",
        "```python",
        "import ddalign",
        "",
        f'patch = ddalign.Patch.load("{name}")      # or the file {patch_file}',
        "with ddalign.patched(model, patch):         # a loaded transformers model; restored on exit",
        "    ...",
        "```",
        "",
    ]
    return "\n".join(out)


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _place(src: Path, dst: Path) -> None:
    """`dst` becomes `src`'s content: a hard link (no second copy of a large patch), else a copy."""
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def write_model_card(source, folder, *, repo_id: str | None = None) -> Path:
    """Write `folder/README.md` from a run folder (or its summary dict) and put the patch and plots
    beside it; returns the folder, ready for `huggingface-cli upload ORG/NAME FOLDER .`."""
    summary, run_dir = _summary(source)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    patch = Path(str(summary.get("patch") or ""))
    if not patch.is_file() and run_dir is not None:  # the run moved: the patch lies beside OUT.run/
        patch = run_dir.with_suffix(".safetensors")
    if patch.is_file():
        _place(patch, folder / patch.name)
    plots = run_dir is not None and all((run_dir / p).is_file() for p in PLOTS)
    if plots:
        for p in PLOTS:
            _place(run_dir / p, folder / p)
    _write_text(folder / CARD, card_text(summary, repo_id=repo_id, plots=plots))
    return folder
