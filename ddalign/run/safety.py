"""What a minimise run checks about its inputs and outputs (called from `ddalign.run.minimise`).

- Outputs: the patch and its run folder are never an input or around one, an existing patch is
  replaced only when it is a ddalign patch, a run folder only when it holds a run's files; the
  old run folder goes only once the inputs have loaded (an input error loses nothing and leaves
  no empty run folder).
- Inputs, for `--resume`: the journal's header records fingerprints of the bundle (its manifest,
  whose per-slice sha256 the oracle checks against the payload), of the target and of every
  prompt set as used (texts after loading and `limit`); a resume with any of them changed is
  refused, naming what changed.

The target's fingerprint is the sha256 of its config.json, of every weight file's tensor list
(names, dtypes, shapes, sizes) and of the content fingerprints of the tensors the bundle patches
(read whole: what the search changes is compared by content, the rest by layout). Hashing every
tensor would read the whole model once more at every start; the patched tensors are the ones a
stale verdict depends on most directly, and a replaced model differs in them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from ddalign.errors import DdalignError
from ddalign.io.outputs import check_not_input, check_replaceable

ROLES = ("harmful", "safe", "benign")


def run_inputs(bundle, target, data) -> dict[str, Any]:
    """The run's input paths by name: the bundle, the target and the prompt files of the `[data]`
    settings (builtin sets are not paths)."""
    inputs: dict[str, Any] = {"bundle": bundle, "target": target}
    for prefix, kind in (("", "search"), ("eval_", "held-out")):
        for role in ROLES:
            spec = getattr(data, prefix + role, None)
            if isinstance(spec, (str, Path)) and not str(spec).startswith("builtin:") and str(spec).lower() != "none":
                inputs[f"{kind} {role} prompts"] = spec
    return inputs


def check_run_outputs(paths, *, resume: bool, overwrite: bool, inputs: dict[str, Any]) -> None:
    """Refuse outputs that would clobber an input or something ddalign did not write; creates nothing."""
    check_not_input(paths.patch, inputs)
    check_not_input(paths.run_dir, inputs, role="run folder")
    if paths.patch.is_dir():
        raise DdalignError(f"{paths.patch}: is a folder; expected a .safetensors file path")
    # a run its test budget stopped wrote a patch that a resume is there to improve
    check_replaceable(paths.patch, kind="patch", overwrite=overwrite or (resume and _stopped_at_budget(paths)))
    if paths.journal.exists() and not (resume or overwrite):
        raise DdalignError(
            f"{paths.journal}: a journal of an earlier run exists; pass --resume to continue "
            f"it or --overwrite to start again"
        )
    if overwrite and not resume and paths.run_dir.exists():
        check_replaceable(paths.run_dir, kind="run", overwrite=True)


def _stopped_at_budget(paths) -> bool:
    try:
        return bool(json.loads((paths.run_dir / "summary.json").read_text()).get("stopped"))
    except (OSError, ValueError, AttributeError):
        return False


def prepare_run_dir(paths, *, resume: bool, overwrite: bool) -> None:
    """Start afresh (remove the earlier run folder) once the inputs are known good."""
    if overwrite and not resume and paths.run_dir.exists():
        shutil.rmtree(paths.run_dir)


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def prompts_fingerprint(entry) -> str | None:
    """sha256 of a loaded prompt set as used: every prompt's text, reference and label."""
    if entry is None:
        return None
    prompts = entry[0]
    rows = [[getattr(p, "text", p), getattr(p, "reference", None), getattr(p, "label", None)] for p in prompts]
    return _digest(rows)


def target_fingerprint(target, tensors, *, allow_pickle: bool = False) -> str:
    """See the module docstring: config, weight layout, and the patched tensors' content."""
    from ddalign.io.checkpoint import Checkpoint

    with Checkpoint.open(target, allow_pickle=allow_pickle) as ck:
        layout = sorted((n, ck.info(n).dtype, list(ck.info(n).shape), ck.info(n).nbytes) for n in ck.names())
        content = {t: ck.fingerprint(t) for t in tensors if t in ck}
        config = json.dumps(ck.config, sort_keys=True)
    return _digest({"config": config, "layout": layout, "content": content})


def input_fingerprints(
    bundle_patch, target, search_sets: dict, eval_sets: dict, *, allow_pickle: bool = False
) -> dict[str, str | None]:
    """The journal header's `inputs`: what a resume must find unchanged, by a name users read."""
    text = json.dumps(bundle_patch.manifest, sort_keys=True, default=str)
    out = {
        "bundle": hashlib.sha256(text.encode()).hexdigest(),
        "target checkpoint": target_fingerprint(target, bundle_patch.tensors(), allow_pickle=allow_pickle),
    }
    for kind, sets in (("search", search_sets), ("held-out", eval_sets)):
        for role in ROLES:
            out[f"{kind} {role} prompts"] = prompts_fingerprint(sets.get(role))
    return out


def changed_inputs(old: dict | None, new: dict) -> list[str]:
    """Names of the inputs whose fingerprint differs (all of them for a journal without any)."""
    if not isinstance(old, dict):
        return list(new)
    return [name for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
