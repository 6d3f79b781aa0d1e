"""The report of a minimise run: Markdown, two plots and JSON, read from the run folder alone.

Inputs: `summary.json` (written by minimise), `journal.jsonl` (one line per oracle test) and
`config.json`; so a report can be redrawn at any time with `ddalign report RUN_DIR`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ddalign.io.atomic import write_json_atomic
from ddalign.run.rule import heldout_text, rule_text
from ddalign.run.summary import RunSummary
from ddalign.transfer.modes import TRANSPLANT

METRICS = (
    ("dsr", "defense success rate", "↑"),
    ("over_refusal", "over-refusal", "↓"),
    ("perplexity", "perplexity", "↓"),
    ("benign_accuracy", "benign accuracy", "↑"),
)


@dataclass
class ReportPaths:
    markdown: Path
    trajectory: Path
    kept_map: Path
    json: Path


def _load(run_dir: Path) -> tuple[RunSummary, list[dict], dict]:
    from ddalign.run.journal import read

    summary = RunSummary.load(run_dir)
    journal = read(run_dir / "journal.jsonl") if (run_dir / "journal.jsonl").exists() else []
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    return summary, journal, config


def _cell(name: str, m: dict | None) -> str:
    if not m or m.get("value") is None:
        return "-"
    if name == "perplexity":
        return f"{m['value']:.3f}"
    ci = m.get("ci95")
    k, n = m.get("k"), m.get("n")
    text = f"{m['value']:.3f}"
    if ci:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    if k is not None and n:
        text += f" ({k}/{n})"
    return text


def _number(x) -> str:
    return f"{x:.1f}" if isinstance(x, float) else ("-" if x is None else str(x))


def oracle_line(oracle: dict, mode: str = TRANSPLANT) -> str | None:
    """The report's line on the rule the search ran against; None when the summary does not record it."""
    config, cal = oracle.get("config") or {}, oracle.get("calibration") or {}
    if not config or "need" not in cal:
        return None
    return f"- oracle: {rule_text(config, cal, mode)}"


def model_text(model: dict) -> str:
    """`org/name@main` at commit `0123456789ab`, or the local path (a summary's `models` entry)."""
    hub = model.get("hub") or {}
    if hub.get("repo_id"):
        return f"`{hub['repo_id']}@{hub.get('revision') or 'main'}` (Hub commit `{hub.get('commit')}`)"
    return f"`{model.get('path')}` (local)"


def model_lines(summary: RunSummary) -> list[str]:
    """The report's lines on the models of the run: every one given by Hub id, with its commit."""
    models = summary.models or {}
    if not any((m or {}).get("hub") for m in models.values()):
        return []
    labels = {
        "aligned": "aligned model",
        "unaligned": "unaligned model (the bundle's base)",
        "base": "common parent (the deltas are the aligned model's change from it)",
        "target": "target",
    }
    return [f"- {labels.get(role, role)}: {model_text(m)}" for role, m in models.items() if m]


def markdown(summary: RunSummary | dict, tests: list[dict]) -> str:
    summary = RunSummary.coerce(summary)
    total = summary.total_params or 0
    share = lambda p: "-" if p is None or not total else f"{100 * p / total:.3f}%"
    metrics = summary.metrics
    rows = [
        ("target before", metrics.get("before"), 0),
        (summary.whole, metrics.get("full"), summary.full_params),
        ("minimal patch", metrics.get("minimal"), summary.kept_params),
    ]
    out = [
        "# ddalign minimise report",
        "",
        f"- bundle: `{summary.bundle}`",
        f"- target: `{summary.target}`",
        *model_lines(summary),
        f"- patch: `{summary.patch}`",
        f"- search: {summary.algorithm} over {', '.join(summary.granularity)}; "
        f"{summary.tests} oracle tests"
        + (
            f" ({summary.answered_without_test} more answered from cache or by inference)"
            if summary.answered_without_test
            else ""
        ),
        *filter(None, [oracle_line(summary.oracle or {}, summary.mode)]),
        *([f"- **stopped early**: {summary.stopped}"] if summary.stopped else []),
        f"- kept {len(summary.kept)} component(s), {summary.kept_params:,} parameters "
        f"= {share(summary.kept_params)} of the model ({total:,})",
        "",
        "## Held-out metrics (95% Wilson intervals)",
        "",
        "| model | " + " | ".join(f"{label} {arrow}" for _, label, arrow in METRICS) + " | params changed |",
        "|---|" + "---|" * (len(METRICS) + 1),
    ]
    for label, m, params in rows:
        out.append(
            f"| {label} | " + " | ".join(_cell(k, (m or {}).get(k)) for k, _, _ in METRICS) + f" | {share(params)} |"
        )
    heldout = summary.heldout_check
    if heldout:
        text = heldout_text(heldout, summary.mode)
        out += ["", (text[0].upper() + text[1:]) + "."]
    data = summary.data
    if data:
        out += [
            "",
            "Search sets: " + ", ".join(f"{k} `{v}`" for k, v in data.get("search", {}).items()),
            "Held-out sets: " + ", ".join(f"{k} `{v}`" for k, v in data.get("heldout", {}).items()),
        ]
    cost = summary.cost
    out += [
        "",
        "## Cost",
        "",
        f"- oracle calls: {cost.get('oracle_calls', '-')}, real tests: {summary.tests}",
        f"- prompts evaluated: {cost.get('prompts', '-')}, tokens generated: {cost.get('tokens', '-')}, "
        f"seconds in the oracle: {_number(cost.get('seconds'))}",
    ]
    calibration = cost.get("calibration")
    if isinstance(calibration, dict):
        out.append(
            f"- calibration (target before, {summary.whole}): {calibration.get('prompts', '-')} prompts, "
            f"{calibration.get('tokens', '-')} tokens, {_number(calibration.get('seconds'))} s"
        )
    passes = sum(1 for t in tests if t.get("verdict") == "PASS")
    out.append(f"- journal: {len(tests)} tests ({passes} PASS, {len(tests) - passes} FAIL)")
    levels = summary.levels
    if levels:
        out += ["", "## Levels", "", "| level | units at start | tests | kept | note |", "|---|---|---|---|---|"]
        for lv in levels:
            kept = lv.get("kept", [])
            out.append(
                f"| {lv['level']} | {lv.get('items', '-')} | {lv.get('tests', '-')} | {len(kept)} | "
                f"{lv.get('skipped') or lv.get('stopped') or ''} |"
            )
    out += ["", "## Kept components", ""] + [f"- `{c}`" for c in summary.kept]
    out += ["", "![search trajectory](trajectory.png)", "", "![kept map](kept_map.png)", ""]
    return "\n".join(out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    _plt().close(fig)
    tmp.replace(path)
    return path


def plot_trajectory(tests: list[dict], path: Path, params_of=None) -> Path:
    """Subset size and DSR (when fully known) against tests run; PASS and FAIL marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs = list(range(1, len(tests) + 1))
    sizes = [len(t.get("subset", [])) for t in tests]
    colours = ["tab:green" if t.get("verdict") == "PASS" else "tab:red" for t in tests]
    ax.plot(xs, sizes, color="0.7", linewidth=1, zorder=1)
    ax.scatter(xs, sizes, c=colours, s=18, zorder=2)
    ax.set_xlabel("oracle tests run")
    ax.set_ylabel("components in the candidate")
    ax.set_title("search trajectory (green PASS, red FAIL)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    exact = [
        (x, float(t["metrics"]["dsr"]["value"]))
        for x, t in zip(xs, tests)
        if ((t.get("metrics") or {}).get("dsr") or {}).get("value") is not None
    ]
    bounds = [(x, v) for x, t in zip(xs, tests) if (v := _dsr(t)) is not None and (x, v) not in exact]
    if exact or bounds:
        ax2 = ax.twinx()
        if exact:
            ax2.plot([x for x, _ in exact], [v for _, v in exact], "x", color="tab:blue", markersize=5, label="DSR")
        if bounds:
            ax2.plot(
                [x for x, _ in bounds],
                [v for _, v in bounds],
                "^",
                color="tab:blue",
                markersize=4,
                fillstyle="none",
                label="DSR lower bound (stopped early)",
            )
        ax2.set_ylabel("DSR on the search set", color="tab:blue")
        ax2.set_ylim(-0.02, 1.02)
        ax2.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _dsr(test: dict) -> float | None:
    m = (test.get("metrics") or {}).get("dsr") or {}
    if m.get("value") is not None:
        return float(m["value"])
    rng = m.get("range")
    return float(rng[0]) if rng else None


def kept_grid(summary: RunSummary | dict) -> tuple[list[str], list[list[float]]]:
    """Rows (modules, then layerless components) x layers: the share of each module's rows kept."""
    from ddalign.architectures import Component

    summary = RunSummary.coerce(summary)
    arch = summary.architecture
    full = [Component.parse(c) for c in summary.full_components or summary.kept]
    kept = [Component.parse(c) for c in summary.kept]
    layered = [c.layer for c in full + kept if c.layer is not None]
    layers = max([int(arch.get("num_layers") or 0)] + [x + 1 for x in layered] + [1])
    # rows: the modules of the bundle and of the patch; a group (mlp) gives way to its members
    # (mlp.gate, mlp.up, ...) when the search kept members of it
    named = {c.unblocked.module for c in full + kept if c.layer is not None and c.module}
    split = {m for m in named if any(o.startswith(m + ".") for o in named)}
    named |= {m for m in arch.get("modules", []) if isinstance(m, str) and any(m.startswith(g + ".") for g in split)}
    modules = sorted(named - split) or sorted(m for m in arch.get("modules", []) if isinstance(m, str)) or ["layer"]
    extra = sorted({c.unblocked.name for c in full + kept if c.layer is None})
    grid = [[0.0] * layers for _ in range(len(modules) + len(extra))]
    for c in kept:
        share = 1.0
        if c.block is not None:
            extent = _extent(summary, c)
            share = (c.block[1] - c.block[0]) / extent if extent else 1.0
        if c.layer is None:
            rows = [len(modules) + extra.index(c.unblocked.name)]
            columns = range(layers)
        else:
            # a whole layer ("L3") or a group ("L3.mlp") covers every module row beneath it
            rows = [
                i
                for i, m in enumerate(modules)
                if not c.module or m == c.module or m.startswith(c.module + ".") or m == "layer"
            ] or [0]
            columns = [c.layer]
        for row in rows:
            for col in columns:
                grid[row][col] = min(1.0, grid[row][col] + share)
    return modules + [f"{e} (no layer)" for e in extra], grid


def plot_kept_map(summary: RunSummary | dict, path: Path) -> Path:
    """Layer x module map: the share of each module's rows that the patch keeps."""
    plt = _plt()
    rows, grid = kept_grid(summary)
    layers = len(grid[0])
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * layers + 2.5), max(2.4, 0.4 * len(rows) + 1.4)))
    im = ax.imshow(grid, aspect="auto", cmap="Greens", vmin=0, vmax=1)
    ax.set_xticks(range(layers), [str(i) for i in range(layers)])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("layer")
    ax.set_title("kept by the minimal patch\n(share of each module's rows)", fontsize=10)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return _save(fig, path)


def _extent(summary: RunSummary, component) -> int | None:
    return (summary.extents or {}).get(component.unblocked.name)


def _write_atomic(path: Path, text: str) -> None:
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_report(run_dir) -> ReportPaths:
    """Report files in `run_dir` from its summary.json, journal.jsonl and config.json."""
    run_dir = Path(run_dir)
    summary, journal, config = _load(run_dir)
    tests = [x for x in journal if x.get("type") == "test"]
    paths = ReportPaths(
        run_dir / "report.md", run_dir / "trajectory.png", run_dir / "kept_map.png", run_dir / "report.json"
    )
    plot_trajectory(tests, paths.trajectory)
    plot_kept_map(summary, paths.kept_map)
    text = markdown(summary, tests)
    _write_atomic(paths.markdown, text)
    record = {
        "summary": summary.to_dict(),
        "config": config,
        "trajectory": [
            {
                "n": i + 1,
                "level": t.get("level"),
                "size": len(t.get("subset", [])),
                "verdict": t.get("verdict"),
                "dsr": _dsr(t),
                "cost": t.get("cost"),
            }
            for i, t in enumerate(tests)
        ],
        "kept_map": dict(zip(("rows", "share"), kept_grid(summary))),
        "files": {
            "markdown": paths.markdown.name,
            "trajectory": paths.trajectory.name,
            "kept_map": paths.kept_map.name,
        },
    }
    write_json_atomic(paths.json, record)
    return paths
