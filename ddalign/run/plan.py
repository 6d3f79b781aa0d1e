"""A minimise run's plan: every input checked, the search units, the prompt sets, the loaded
target, the journal opened (or resumed) and the oracle ready to calibrate.

Nothing here searches; `ddalign.run.execute` does, then `ddalign.run.summary` measures and writes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from ddalign import __version__
from ddalign.errors import DdalignError
from ddalign.io.atomic import write_json_atomic
from ddalign.run.safety import input_fingerprints, prepare_run_dir, run_inputs
from ddalign.run.units import SearchUnits
from ddalign.settings import Settings
from ddalign.transfer.modes import whole_bundle

Say = Callable[[str], None]


@dataclass
class RunPaths:
    """Where a run keeps its files: the patch, and a folder beside it for journal and report."""

    patch: Path
    run_dir: Path

    @classmethod
    def for_output(cls, out: str | Path) -> "RunPaths":
        out = Path(out)
        if out.suffix != ".safetensors":
            raise DdalignError(f"output {out}: expected a file name ending in .safetensors")
        return cls(patch=out, run_dir=out.with_suffix(".run"))

    @property
    def journal(self) -> Path:
        return self.run_dir / "journal.jsonl"

    @property
    def config(self) -> Path:
        return self.run_dir / "config.json"

    @property
    def summary(self) -> Path:
        return self.run_dir / "summary.json"

    @property
    def calibration(self) -> Path:
        return self.run_dir / "calibration.json"


@dataclass
class RunPlan:
    """What a run searches, on what, against which oracle; built by `plan_run`."""

    settings: Settings
    paths: RunPaths
    bundle_path: str
    target: str
    bundle: Any  # the Patch of the whole bundle
    arch: Any
    components: list[str]  # the bundle's components in the searched layers
    units: SearchUnits
    search_sets: dict  # role -> (prompts, source) or None
    eval_sets: dict
    judge: Any
    model: Any
    tokenizer: Any
    dist: Any
    header: dict  # the journal header (what a resume must match)
    oracle: Any
    journal: Any = None  # on the main process only
    cache: dict = field(default_factory=dict)  # the journal's verdicts (resume)

    def calibrate(self, say: Say):
        """The oracle's two full measurements (saved: a resume reads them back)."""
        say("calibrating: the target as it is and with the whole bundle")
        cal = self.oracle.calibrate()
        if self.dist.is_main:
            write_json_atomic(self.paths.calibration, cal.to_dict())
        say(
            f"DSR on the search set: target {cal.empty['dsr']['value']:.3f}, {whole_bundle(self.bundle.mode)} "
            f"{cal.full['dsr']['value']:.3f}; a candidate passes with >= {cal.need}/{cal.n} refusals"
        )
        return cal


def plan_run(
    bundle: str | Path,
    target: str | Path,
    out: str | Path,
    settings: Settings,
    *,
    resume: bool,
    overwrite: bool,
    allow_other_base: bool,
    allow_pickle: bool,
    trust_remote_code: bool,
    say: Say,
) -> RunPlan:
    """Check the inputs, load the bundle and the target once, open the journal, build the oracle."""
    from ddalign.evaluate.distributed import Dist
    from ddalign.evaluate.generate import load_model
    from ddalign.evaluate.oracle import Oracle
    from ddalign.io.patch import Patch

    oracle_config = settings.oracle_config()
    paths = RunPaths.for_output(out)
    dist = Dist.from_env()
    if dist.is_main:
        _check_output(paths, resume, overwrite, run_inputs(bundle, target, settings.data))
    bundle_patch = Patch.load(bundle)
    arch = bundle_arch(bundle_patch)
    components = _select_layers(bundle_patch.components(), settings.search.layers, arch)
    units = SearchUnits(components, arch, settings.search.block_size)
    _check_target_base(bundle_patch, target, allow_other_base, allow_pickle, say)

    search_sets = load_sets(settings, held_out=False)
    eval_sets = load_sets(settings, held_out=True)
    judge = settings.make_judge(allow_pickle=allow_pickle)
    say(f"loading the target {target}")
    g = settings.generation
    model, tokenizer = load_model(
        target,
        device=g.device or (str(dist.device) if dist.is_distributed else None),
        dtype=g.dtype,
        device_map=g.device_map,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )

    effective = settings.to_dict()
    # the bundle by content (a moved bundle still resumes), the target by path
    header = {
        "config": effective,
        "bundle": {"sha256": _bundle_fingerprint(bundle_patch)},
        "target": str(target),
        "started": _now(),
        "version": __version__,
        "inputs": input_fingerprints(bundle_patch, target, search_sets, eval_sets, allow_pickle=allow_pickle),
    }
    journal, cache, calibration = None, {}, None
    if dist.is_main:
        from ddalign.run.journal import Journal

        prepare_run_dir(paths, resume=resume, overwrite=overwrite)
        journal = Journal.open(paths.journal, header, resume=resume)
        cache = dict(journal.cache()) if resume else {}
        write_json_atomic(paths.config, {**effective, "bundle": str(bundle), "target": str(target)})
        if resume and paths.calibration.exists():
            calibration = json.loads(paths.calibration.read_text())
    if dist.is_distributed:
        cache, calibration = _broadcast((cache, calibration))

    if search_sets["harmful"] is None:
        raise DdalignError("data.harmful: the search needs harmful prompts")
    oracle = Oracle(
        model,
        tokenizer,
        bundle_patch,
        search_sets["harmful"][0],
        safe=_prompts(search_sets["safe"]),
        benign=_prompts(search_sets["benign"]),
        judge=judge,
        config=oracle_config,
        dist=dist,
        full=components,
        calibration=calibration,
    )
    return RunPlan(
        settings=settings,
        paths=paths,
        bundle_path=str(bundle),
        target=str(target),
        bundle=bundle_patch,
        arch=arch,
        components=components,
        units=units,
        search_sets=search_sets,
        eval_sets=eval_sets,
        judge=judge,
        model=model,
        tokenizer=tokenizer,
        dist=dist,
        header=header,
        oracle=oracle,
        journal=journal,
        cache=cache,
    )


def _prompts(entry):
    return None if entry is None else entry[0]


def load_sets(settings: Settings, *, held_out: bool) -> dict[str, tuple[list, str] | None]:
    """The search sets (data.harmful ..., cut to data.limit) or the held-out sets (data.eval_harmful ...,
    cut to data.eval_limit)."""
    from ddalign.evaluate.runner import resolve_prompts

    data = settings.data
    prefix, limit = ("eval_", data.eval_limit) if held_out else ("", data.limit)
    out = {}
    for role in ("harmful", "safe", "benign"):
        spec = getattr(data, prefix + role)
        out[role] = resolve_prompts(role, spec, column=data.column, limit=limit) if spec is not None else None
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _bundle_fingerprint(patch) -> str:
    """The bundle's identity for resume: its manifest (sources' fingerprints, components, scope)."""
    text = json.dumps(patch.manifest, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_output(paths: RunPaths, resume: bool, overwrite: bool, inputs: dict) -> None:
    """Output rules (ddalign.run.safety); the run folder is made only once the inputs have loaded."""
    from ddalign.run.safety import check_run_outputs

    check_run_outputs(paths, resume=resume, overwrite=overwrite, inputs=inputs)


def _select_layers(components: Sequence[str], layers, arch) -> list[str]:
    from ddalign.architectures import Component, parse_layers

    wanted = parse_layers(layers, arch.num_layers)
    if wanted is None:
        return list(components)
    keep = [c for c in components if Component.parse(c).layer in set(wanted)]
    if not keep:
        raise DdalignError(f"search.layers {layers}: the bundle has no component in these layers")
    return keep


def bundle_arch(patch):
    """The architecture map a bundle was made on, rebuilt from its manifest (no checkpoint needed)."""
    arch = getattr(patch, "architecture", None)
    arch = arch() if callable(arch) else arch
    if arch is None:
        raise DdalignError("bundle manifest: no architecture recorded; re-extract it with this version")
    scope = patch.manifest.get("scope")
    return arch.with_scope(scope) if scope else arch


def _check_target_base(patch, target, allow_other_base: bool, allow_pickle: bool, say: Say) -> None:
    """The target should be the model the bundle was extracted against (else a conscious choice)."""
    from ddalign.transfer.apply import base_mismatches

    differing, checked = base_mismatches(patch, target, allow_pickle=allow_pickle)
    if not differing:
        return
    from ddalign.io.hub import base_mismatch_text

    text = base_mismatch_text(patch, target, target, differing, checked)
    if not allow_other_base:
        raise DdalignError(text + "; pass --allow-other-base to search on another fine-tune of the same base")
    say("warning: " + text)


def _broadcast(obj):
    """Rank 0's object on every rank (journal cache and calibration for a resumed distributed run)."""
    import torch.distributed as torch_dist

    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]
