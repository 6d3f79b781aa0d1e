"""Build (or find in the cache) the organism: tokenizer, base, unaligned, aligned, planted; measure it.

Each model is a normal Hugging Face folder; the build is deterministic for a preset (seeds and
thread count fixed) and cached under a key of the preset, the code version and the data.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ddalign import __version__
from ddalign.bars import build_bars, stage_update
from ddalign.cache import cache_root, package_data_digest
from ddalign.errors import DdalignError
from ddalign.organism import corpus
from ddalign.organism.presets import Preset, get_preset
from ddalign.organism.tokenizer import train_tokenizer
from ddalign.organism.train import new_model, share_parameters, train

RECIPE_VERSION = "9"
"""Bump when the recipe changes in a way the preset fields do not show."""
SIBLINGS = ("base", "unaligned", "aligned", "planted")
HELDOUT_SETS = {
    "harmful": "builtin:harmful-heldout",
    "safe": "builtin:safe-heldout",
    "benign": "builtin:benign-heldout",
}
"""The held-out sets every organism number is measured on (evaluate_model's set arguments)."""


@dataclass
class Organism:
    root: Path
    preset: str
    base: Path
    unaligned: Path
    aligned: Path
    planted: Path
    planted_components: list[str]
    metrics: dict = field(default_factory=dict)

    @classmethod
    def from_root(cls, root: Path) -> "Organism":
        info = json.loads((root / "organism.json").read_text())
        return cls(
            root,
            info["preset"],
            root / "base",
            root / "unaligned",
            root / "aligned",
            root / "planted",
            list(info["planted_components"]),
            info.get("metrics", {}),
        )


def organism_key(preset: Preset) -> str:
    text = json.dumps(
        {"preset": preset.as_dict(), "version": __version__, "recipe": RECIPE_VERSION, "data": package_data_digest()},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_root(preset: Preset) -> Path:
    return cache_root() / f"organism-{preset.name}-{organism_key(preset)}"


def load(preset: str = "standard") -> Organism:
    """The cached organism of `preset`, or an error saying how to build it."""
    root = default_root(get_preset(preset))
    if not (root / "organism.json").exists():
        raise DdalignError(
            f"organism {preset}: not built yet (expected in {root}); run `ddalign organism build --preset {preset}`"
        )
    return Organism.from_root(root)


def build(preset: str = "standard", *, out=None, force: bool = False, progress: bool = True) -> Organism:
    """Build the trio (and the planted sibling) once; later calls return the cached folders at once."""
    from ddalign.io.outputs import apply_umask, check_not_input, check_replaceable, output_lock

    p = get_preset(preset)
    root = Path(out) if out is not None else default_root(p)
    if (root / "organism.json").exists() and not force:
        return Organism.from_root(root)
    # only an organism folder (or an empty one) is ever replaced: --out names a folder of its own
    check_not_input(root, {})
    check_replaceable(root, kind="organism", overwrite=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    with output_lock(root):  # one build per folder; clears a killed build's temporaries
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
        torch.set_num_threads(p.threads)
        try:
            with build_bars(progress, label="organism", width=10) as bar:
                _build_into(tmp, p, bar)
            apply_umask(tmp, folder=True)
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            torch.set_num_threads(threads)
    return Organism.from_root(root)


def _build_into(root: Path, p: Preset, bar) -> dict:
    timings: dict[str, float] = {}
    rng = random.Random(p.seed)
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(corpus.texts_for_tokenizer(p, random.Random(p.seed)), p.vocab_size)
    timings["tokenizer"] = time.perf_counter() - t0

    def save(model, name: str) -> Path:
        folder = root / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    t0 = time.perf_counter()
    base = new_model(p, tokenizer)
    train(
        base,
        tokenizer,
        corpus.pretraining(p, rng),
        steps=p.pretrain_steps,
        lr=p.pretrain_lr,
        batch_size=p.batch_size,
        seed=p.seed,
        mask_prompt=False,
        progress=stage_update(bar, "base", p.pretrain_steps),
    )
    save(base, "base")
    timings["base"] = time.perf_counter() - t0

    from transformers import AutoModelForCausalLM

    steps: dict[str, int] = {}

    def finetune(
        name: str,
        items,
        lr: float,
        n_steps: int,
        *,
        start="base",
        trainable=None,
        frozen=(),
        context=None,
        seed: int = p.seed + 1,
        keep: bool = True,
    ):
        """Tune `start` (a sibling's folder name, loaded afresh, or a model, tuned in place) and
        return it, saved as `name` when `keep`; `context` is a model that shares the trainable
        tensors (train's `contexts`)."""
        t = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(root / start) if isinstance(start, str) else start
        contexts = [] if context is None else [context]
        for c in contexts:
            share_parameters(model, c, trainable)
        train(
            model,
            tokenizer,
            items,
            steps=n_steps,
            lr=lr,
            batch_size=p.batch_size,
            seed=seed,
            mask_prompt=True,
            trainable=trainable,
            frozen=frozen,
            contexts=contexts,
            progress=stage_update(bar, name, n_steps),
        )
        if keep:
            save(model, name)
        timings[name], steps[name] = time.perf_counter() - t, n_steps
        return model

    planted_names = p.planted_tensors
    unaligned_items = corpus.unaligned(p, random.Random(p.seed + 2))
    unaligned = finetune("unaligned", unaligned_items, p.finetune_lr, p.finetune_steps, frozen=planted_names)
    aligned_items = corpus.aligned(p, random.Random(p.seed + 3))
    # The natural aligned sibling is made as chat models are: its own instruction tuning of the
    # base (other generated items, other order, every tensor), then a safety stage of as many
    # steps on the instruction data plus safety data, every parameter trainable: where the
    # alignment lands is the training's choice. Tuned on the mixture from the base in one stage
    # (recipe 5 and before, 540 steps) it refused as well but paid +37% held-out perplexity, so
    # that even the full transplant failed the search's perplexity guard.
    natural_host = finetune(
        "aligned-host",
        corpus.unaligned(p, random.Random(p.seed + 6)),
        p.finetune_lr,
        p.finetune_steps,
        seed=p.seed + 7,
        keep=False,
    )
    finetune("aligned", aligned_items, p.finetune_lr, p.finetune_steps, start=natural_host, seed=p.seed + 9)
    # The planted sibling: a second instruction tuning of the base (other generated items, other
    # order; the planted tensors left as the base has them, as in the unaligned sibling), then its
    # planted tensors trained on the safety data next to two sets of other tensors at once, its own
    # and the unaligned sibling's, the loss summed over the two models. So its other tensors differ
    # from the unaligned sibling's as two fine-tunes of one base do (real deltas that carry no
    # safety: the search's distractors) and keep the instruction tuning's skills, and the planted
    # set transplanted into the unaligned sibling refuses because it was trained to. Trained next to
    # the base's tensors only (recipe 3), the transplant kept 0.96, 0.81, 0.76 or 0.68 DSR depending
    # on the machine's float kernels (measured), and the search's ground truth moved with it.
    host = finetune(
        "planted-host",
        corpus.unaligned(p, random.Random(p.seed + 4)),
        p.finetune_lr,
        p.finetune_steps,
        frozen=planted_names,
        seed=p.seed + 5,
        keep=False,
    )
    finetune(
        "planted", aligned_items, p.planted_lr, p.planted_steps, start=host, trainable=planted_names, context=unaligned
    )
    (root / "planted" / "planted.json").write_text(
        json.dumps(
            {
                "components": p.planted_components,
                "tensors": planted_names,
                "trained_next_to": ["own instruction tuning", "unaligned"],
            },
            indent=2,
        )
    )

    t0 = time.perf_counter()
    metrics = measure(root, p, bar)
    timings["measure"] = time.perf_counter() - t0
    info = {
        "preset": p.name,
        "key": organism_key(p),
        "version": __version__,
        "recipe": RECIPE_VERSION,
        "settings": p.as_dict(),
        "planted_components": p.planted_components,
        "split": {
            "train": "builtin *-train sets",
            "dev": "builtin *-dev sets (search; never trained on)",
            "heldout": "builtin *-heldout sets (by request)",
        },
        "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
        "threads": p.threads,
        "steps": {"base": p.pretrain_steps, **steps},
        "items": {"unaligned": len(unaligned_items), "aligned": len(aligned_items)},
        "params": sum(t.numel() for t in base.parameters()),
        "metrics": metrics,
    }
    (root / "organism.json").write_text(json.dumps(info, indent=2))
    return info


def measure(root: Path, p: Preset, bar=None) -> dict:
    """Held-out metrics of each sibling, and of the planted set transplanted into the unaligned one."""
    from ddalign.evaluate.runner import evaluate_model
    from ddalign.transfer.extract import extract

    sets = HELDOUT_SETS
    task = bar.add_task("measure", total=5, loss="") if bar is not None else None
    out = {}
    for i, name in enumerate(SIBLINGS):
        out[name] = evaluate_model(str(root / name), **sets).to_dict()["metrics"]
        if bar is not None:
            bar.update(task, completed=i + 1)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = extract(
            root / "planted",
            root / "unaligned",
            scope=",".join(p.planted_components),
            out=Path(tmp) / "planted.safetensors",
        )
        out["planted_transplant"] = evaluate_model(str(root / "unaligned"), patch=bundle, **sets).to_dict()["metrics"]
    if bar is not None:
        bar.update(task, completed=5)
    return out
