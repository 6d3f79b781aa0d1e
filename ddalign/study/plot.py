"""One PNG per model: its refusal openings' largest clusters as bars (share of its refusals)."""

from __future__ import annotations

import re
from pathlib import Path

from ddalign.study.openings import Clustering

DEFAULT_TOP = 8


def plot_clusters(clustering: Clustering, path, *, title: str, top: int = DEFAULT_TOP) -> Path:
    """Horizontal bars of the `top` largest clusters and one "other" bar for the rest."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, whatever the user's backend
    import matplotlib.pyplot as plt

    path = Path(path)
    n = clustering.refusals
    bars = clustering.top(top) if n else []
    labels = [_label(opening, other=i == top) for i, (opening, _) in enumerate(bars)]
    shares = [count / n for _, count in bars]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.38 * max(len(bars), 1)))
    if bars:
        colours = ["0.65" if i == top else "tab:blue" for i in range(len(bars))]
        ax.barh(range(len(bars)), shares, color=colours)
        for i, (share, (_, count)) in enumerate(zip(shares, bars)):
            ax.text(share + 0.01, i, f"{count} ({share:.0%})", va="center", fontsize=8)
        ax.set_yticks(range(len(bars)), labels, fontsize=8)
        ax.invert_yaxis()  # largest on top
    else:
        ax.text(0.5, 0.5, "no refusals", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("share of the model's refusals")
    u = clustering.uniformity
    ax.set_title(
        f"{title}\n{n} refusals, {clustering.distinct} openings, uniformity " + ("n/a" if u is None else f"{u:.2f}"),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(opening: str, *, other: bool) -> str:
    if other:
        return "(other openings)"
    text = opening or "(no words)"
    return text if len(text) <= 48 else text[:47] + "…"


def chart_names(models: list[str]) -> list[str]:
    """A distinct, file-safe PNG name per model ('org/name@rev' -> 'org--name@rev.png')."""
    names: list[str] = []
    for model in models:
        model = model.rstrip("/")
        # a path names its folder; a Hub id 'org/name[@rev]' keeps its org
        is_path = model.startswith(("/", ".", "~")) or model.count("/") > 1
        stem = (Path(model).name if is_path else model.replace("/", "--")).lstrip(".-")
        stem = re.sub(r"[^A-Za-z0-9._@+-]+", "_", stem)[:80] or "model"
        name, k = f"{stem}.png", 2
        while name in names or name == "refusals.json":
            name, k = f"{stem}-{k}.png", k + 1
        names.append(name)
    return names
