"""The whole flow on the built-in model organism: build or load the trio, extract, minimise, apply,
evaluate the patched folder.

It is the README's main job, so it runs offline on a laptop CPU, and its folder holds every
artefact a user would make on a real model (bundle, patch, run report, patched checkpoint).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ddalign.errors import DdalignError
from ddalign.settings import Settings, as_settings

MARKER = ".ddalign-demo"
"""A demo folder holds this file, so that a second run may replace the folder and nothing else."""

SIBLINGS = ("planted", "natural")


@dataclass
class DemoResult:
    """Where the artefacts lie and the before/after numbers (held-out sets)."""

    folder: Path
    bundle: Path
    patch: Path
    patched_model: Path
    report: Path
    sibling: str
    kept: list[str]
    planted: list[str]
    rows: dict[str, dict] = field(default_factory=dict)  # label -> {"metrics": ..., "param_share": ...}
    tests: int = 0

    @property
    def outside_planted(self) -> list[str] | None:
        """Ground truth (planted sibling): kept components that share no tensor rows with the planted set."""
        if self.sibling != "planted" or not self.planted:
            return None
        from ddalign.io.patch import Patch

        arch = Patch.load(self.patch).architecture()
        planted = [arch.resolve(p) for p in self.planted]

        def overlaps(kept: str) -> bool:
            return any(_slices_overlap(a, b) for a in arch.resolve(kept) for p in planted for b in p)

        return [k for k in self.kept if not overlaps(k)]


def _slices_overlap(a, b) -> bool:
    if a.tensor != b.tensor:
        return False
    if a.dim is None or b.dim is None or a.dim != b.dim:
        return True
    return a.start < b.stop and b.start < a.stop


def _prepare(folder: Path, overwrite: bool) -> None:
    from ddalign.io.outputs import check_not_input

    check_not_input(folder, {}, role="--out")  # never the current folder or one holding it
    if folder.exists():
        if not (folder / MARKER).exists() and any(folder.iterdir()) and not overwrite:
            raise DdalignError(
                f"{folder}: exists and is not a ddalign demo folder; choose another --out or pass --overwrite"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("made by `ddalign demo`; replaced by the next demo run\n")


def run_demo(
    out: str | Path = "ddalign-demo",
    *,
    preset: str = "standard",
    sibling: str = "planted",
    scope: str | None = None,
    config: Settings | dict | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    view=None,
    progress: bool = True,
    pair: str | None = None,
    data=None,
) -> DemoResult:
    """Build (or load from the cache) the organism, then extract -> minimise -> apply -> evaluate.

    `config`: the run's settings (default: the organism preset, or the pair's); the bundle's
    scope is `scope`, else the settings' `search.scope`, else all. With `pair` ("smollm2") the
    flow runs on the real pair instead (built once from the public sets in `data`, else
    $DDALIGN_PUBLIC_DATA; `sibling` is then the pair's aligned sibling)."""
    from ddalign.evaluate.runner import evaluate_model
    from ddalign.organism import build
    from ddalign.run.minimise import minimise
    from ddalign.transfer.apply import apply_to_folder
    from ddalign.transfer.extract import extract

    if sibling not in SIBLINGS:
        raise DdalignError(f"--sibling: expected one of {', '.join(SIBLINGS)}, got {sibling!r}")
    say = log or (lambda text: None)
    folder = Path(out)
    _prepare(folder, overwrite)
    if pair is not None:
        from ddalign.pair import build_pair

        say(f"1/5 the real pair ({pair}; built once, then cached)")
        real = build_pair(pair, data=data, progress=progress)
        aligned, unaligned, sibling, planted = Path(real.aligned), Path(real.unaligned), "natural", []
    else:
        say(f"1/5 the model organism ({preset} preset; built once, then cached)")
        organism = build(preset, progress=progress)
        aligned = Path(organism.planted if sibling == "planted" else organism.aligned)
        unaligned = Path(organism.unaligned)
        planted = list(organism.planted_components)

    settings = Settings.load(pair or "organism") if config is None else as_settings(config)
    scope = scope or settings.search.scope or "all"
    say(f"2/5 extract: the {sibling} aligned sibling against the unaligned one, scope {scope}")
    bundle = folder / "bundle.safetensors"
    extract(aligned, unaligned, scope=scope, out=bundle)

    say("3/5 minimise: delta debugging against the oracle (held-out numbers follow)")
    patch = folder / "patch.safetensors"
    result = minimise(bundle, unaligned, patch, config=settings, log=say, view=view)

    say("4/5 apply: the minimal patch into a copy of the unaligned checkpoint")
    patched_model = folder / "patched-model"
    apply_to_folder(patch, unaligned, patched_model)

    say("5/5 evaluate: the patched checkpoint as saved on disk (held-out sets)")
    data = result.data.get("heldout", {})
    record = evaluate_model(
        str(patched_model),
        harmful=data.get("harmful") or None,
        safe=data.get("safe") or "none",
        benign=data.get("benign") or "none",
    )
    record.save(folder / "patched-model.evaluation.json")
    aligned_record = evaluate_model(
        str(aligned),
        harmful=data.get("harmful") or None,
        safe=data.get("safe") or "none",
        benign=data.get("benign") or "none",
    )
    rows = {
        "unaligned (before)": {"metrics": result.metrics["before"], "param_share": 0.0},
        f"aligned sibling ({sibling})": {"metrics": aligned_record.to_dict()["metrics"], "param_share": None},
        f"full transplant (scope {scope})": {"metrics": result.metrics["full"], "param_share": result.full_share},
        "minimal patch": {"metrics": result.metrics["minimal"], "param_share": result.param_share},
        "patched checkpoint (ddalign apply)": {
            "metrics": record.to_dict()["metrics"],
            "param_share": result.param_share,
        },
    }
    return DemoResult(
        folder=folder,
        bundle=bundle,
        patch=patch,
        patched_model=patched_model,
        report=result.run_dir / "report.md",
        sibling=sibling,
        kept=result.kept,
        planted=planted,
        rows=rows,
        tests=result.tests,
    )
