"""Rich tables that set several models' metrics side by side (minimise, demo).

Input is the evaluator's JSON metrics dict (`EvaluationRecord.to_dict()["metrics"]`), so a table
can be drawn from a saved summary as well as from a live run.
"""

from __future__ import annotations

from rich.table import Table

COLUMNS = (
    ("dsr", "DSR ↑"),
    ("over_refusal", "over-refusal ↓"),
    ("perplexity", "perplexity ↓"),
    ("benign_accuracy", "benign acc ↑"),
)


def format_metric(name: str, metric: dict | None) -> str:
    """'0.950 [0.90, 0.98]' for a rate, '2.431' for perplexity, '-' when not measured."""
    if not metric or metric.get("value") is None:
        return "-"
    value = metric["value"]
    if name == "perplexity":
        return f"{value:.3f}"
    ci = metric.get("ci95")
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{value:.3f}"


def comparison_table(rows: dict[str, dict], *, title: str | None = None) -> Table:
    """rows: label -> {"metrics": metrics dict, "param_share": float | None}."""
    table = Table(title=title)
    table.add_column("model", justify="left")
    for _, header in COLUMNS:
        table.add_column(header, justify="right")
    table.add_column("params changed", justify="right")
    for label, row in rows.items():
        metrics = row.get("metrics") or {}
        share = row.get("param_share")
        table.add_row(
            label,
            *(format_metric(key, metrics.get(key)) for key, _ in COLUMNS),
            "-" if share is None else f"{100 * share:.2f}%",
        )
    ns = {key: (rows and next(iter(rows.values())).get("metrics", {}).get(key) or {}).get("n") for key, _ in COLUMNS}
    table.caption = "95% Wilson intervals; n = " + ", ".join(f"{k} {n}" for k, n in ns.items() if n)
    return table


def summary_table(summary) -> Table:
    """The before / full bundle / minimal patch table of a minimise run (a `RunSummary` or its dict)."""
    from ddalign.run.summary import RunSummary

    summary = RunSummary.coerce(summary)
    metrics = summary.metrics
    rows = {
        "target (before)": {"metrics": metrics.get("before"), "param_share": 0.0},
        summary.whole: {"metrics": metrics.get("full"), "param_share": summary.full_share},
        "minimal patch": {"metrics": metrics.get("minimal"), "param_share": summary.param_share},
    }
    table = comparison_table(rows, title=f"held-out sets: {summary.target}")
    table.caption += f"; {summary.tests} oracle tests, {len(summary.kept)} component(s) kept"
    hubs = {role: m["hub"] for role, m in (summary.models or {}).items() if (m or {}).get("hub")}
    if hubs:  # models given by Hub id: which commit the run used
        table.caption += "\n" + "; ".join(
            f"{role} {h['repo_id']}@{str(h.get('commit'))[:12]}" for role, h in hubs.items()
        )
    return table
