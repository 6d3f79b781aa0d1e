"""The real pair's numbers as a rich table and as Markdown (the same columns)."""

from __future__ import annotations

from rich.table import Table

from ddalign.run.tables import format_metric

COLUMNS = (
    ("dsr_advbench", "AdvBench held-out DSR ↑"),
    ("dsr_package", "package held-out DSR ↑"),
    ("over_refusal", "XSTest over-refusal ↓"),
    ("benign_accuracy", "benign acc ↑"),
    ("perplexity", "benign ppl ↓"),
    ("text_perplexity", "text ppl ↓"),
)


def cells(metrics: dict) -> list[str]:
    out = []
    for key, _ in COLUMNS:
        value = metrics.get(key)
        if isinstance(value, (int, float)):
            out.append(f"{value:.3f}")
        else:
            out.append(format_metric("perplexity" if key == "perplexity" else key, value))
    return out


def pair_table(pair) -> Table:
    table = Table(title=f"real pair ({pair.recipe}): held-out public sets, never trained on")
    table.add_column("model", justify="left")
    for _, header in COLUMNS:
        table.add_column(header, justify="right")
    table.add_column("train s", justify="right")
    seconds = pair.info.get("seconds", {})
    for name, metrics in pair.metrics.items():
        table.add_row(name, *cells(metrics), f"{seconds[name]:.0f}" if name in seconds else "-")
    ns = {k: (next(iter(pair.metrics.values()), {}).get(k) or {}) for k, _ in COLUMNS[:4]}
    table.caption = "95% Wilson intervals; n = " + ", ".join(
        f"{k} {v['n']}" for k, v in ns.items() if isinstance(v, dict) and v.get("n")
    )
    return table


def markdown_rows(rows: dict[str, dict], extra: dict[str, list[str]] | None = None, extra_headers=()) -> str:
    """A Markdown table of label -> metrics (with optional extra columns per label)."""
    headers = ["model", *(h for _, h in COLUMNS), *extra_headers]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for label, metrics in rows.items():
        more = (extra or {}).get(label, [])
        lines.append("| " + " | ".join([label, *cells(metrics), *more]) + " |")
    return "\n".join(lines)
