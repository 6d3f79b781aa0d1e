"""The refusal-pattern study's records: per model (DSR, per-category rates, opening clusters) and
across models (the correlation), as JSON-ready dicts and a rich table."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from ddalign import __version__
from ddalign.evaluate.metrics import Rate
from ddalign.study.correlation import Correlation, correlate
from ddalign.study.measure import Answer, ModelAnswers
from ddalign.study.openings import NORMALISATION, UNIFORMITY, Clustering, cluster_openings, read_opening
from ddalign.study.rates import category_rates

FORMAT = "ddalign.refusals/1"


@dataclass
class ModelRefusals:
    """One model's part of the study."""

    model: str
    dsr: Rate
    categories: dict[str, Rate]
    openings: Clustering
    cut: int  # refusals whose opening the token limit cut before it was complete
    generation: dict
    cost: dict
    answers: list[Answer]
    chart: str | None = None  # the PNG's file name in the output folder

    @classmethod
    def of(cls, measured: ModelAnswers, words: int) -> "ModelRefusals":
        answers = measured.answers
        refusals = [a for a in answers if a.refused]
        cut = sum(1 for a in refusals if a.stop == "length" and not read_opening(a.text, words).complete)
        return cls(
            model=measured.model,
            dsr=Rate.from_flags(a.refused for a in answers),
            categories=category_rates([a.category for a in answers], [a.refused for a in answers]),
            openings=cluster_openings([a.text for a in refusals], words),
            cut=cut,
            generation=measured.generation,
            cost=measured.cost,
            answers=answers,
        )

    def as_dict(self) -> dict:
        words = self.openings.words
        return {
            "model": self.model,
            "dsr": self.dsr.as_dict(),
            "categories": {c: r.as_dict() for c, r in self.categories.items()},
            "openings": {**self.openings.as_dict(), "cut_by_token_limit": self.cut},
            "chart": self.chart,
            "generation": self.generation,
            "cost": self.cost,
            "answers": [
                {
                    "id": a.id,
                    "category": a.category,
                    "refused": a.refused,
                    "opening": read_opening(a.text, words).key if a.refused else None,
                    "stop": a.stop,
                }
                for a in self.answers
            ],
        }


@dataclass
class RefusalStudy:
    """Every model's refusals and the correlation of uniformity with DSR across them."""

    models: list[ModelRefusals]
    correlation: Correlation
    data: dict  # the harmful set: source, n, categories
    judge: dict
    generation: dict  # the shared settings: greedy, max_new_tokens, batch_size, template, early_stop false
    words: int
    top: int
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @classmethod
    def of(cls, models: list[ModelRefusals], **info) -> "RefusalStudy":
        correlation = correlate(
            [m.model for m in models], [m.openings.uniformity for m in models], [m.dsr.value for m in models]
        )
        return cls(models, correlation, **info)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "tool_version": __version__,
            "created": self.created,
            "data": self.data,
            "judge": self.judge,
            "generation": self.generation,
            "openings": {
                "words": self.words,
                "normalisation": NORMALISATION.format(words=self.words),
                "uniformity": UNIFORMITY,
                "chart_top": self.top,
            },
            "models": [m.as_dict() for m in self.models],
            "correlation": self.correlation.as_dict(),
        }


def study_table(study: RefusalStudy):
    """A rich table: per model DSR with its interval, refusals, clusters, largest share, uniformity."""
    from rich.table import Table

    table = Table(title=f"ddalign refusals: {study.data.get('source')} ({study.data.get('n')} prompts)")
    for col, justify in (
        ("model", "left"),
        ("DSR", "right"),
        ("95% CI", "right"),
        ("refusals", "right"),
        ("clusters", "right"),
        ("largest share", "right"),
        ("uniformity", "right"),
        ("most common opening", "left"),
    ):
        table.add_column(col, justify=justify)
    for m in study.models:
        o = m.openings
        top = o.clusters[0] if o.clusters else None
        table.add_row(
            m.model,
            f"{m.dsr.value:.3f}",
            f"[{m.dsr.ci95[0]:.3f}, {m.dsr.ci95[1]:.3f}]",
            f"{o.refusals}/{m.dsr.n}",
            str(o.distinct),
            "-" if o.largest_share is None else f"{o.largest_share:.3f}",
            "n/a" if o.uniformity is None else f"{o.uniformity:.3f}",
            "" if top is None else f"{top.opening or '(no words)'!r} x{top.count}",
        )
    g = study.generation
    table.caption = (
        f"greedy, {g.get('max_new_tokens')} new tokens per answer ({g.get('setting')}), no early stop; judge: "
        f"{study.judge.get('kind')}; opening = {NORMALISATION.format(words=study.words)}; "
        f"uniformity = {UNIFORMITY}"
    )
    return table
