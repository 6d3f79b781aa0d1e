"""Hugging Face Hub ids wherever ddalign takes a model, a patch or a prompt set.

Syntax (docs/hub.md):

- a model or a patch: `ORG/NAME` or `ORG/NAME@REVISION` (branch, tag or commit); a local path of
  the same name wins (a message says so), `hf://ORG/NAME[@REVISION]` always means the Hub;
- a prompt set: `hf://datasets/ORG/NAME[@REVISION][/FILE]`.

Everything goes through `huggingface_hub` (`snapshot_download`, `hf_hub_download`), so
`HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN`, `HF_HUB_OFFLINE` and the cache behave as in transformers.
Only the files ddalign reads are fetched: safetensors weights and their index, configs, tokenizer
and chat-template files; pickle weights only with `allow_pickle`, code (`*.py`) only with
`trust_remote_code`; nothing in sub-folders. Each resolution records the commit it got, for the
manifests (`provenance`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ddalign.errors import DdalignError

log = logging.getLogger("ddalign.hub")

PREFIX = "hf://"
DATASETS = "datasets/"
METADATA_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.model",
    "chat_template*",
)
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_PATTERNS = ("*.safetensors",)
PICKLE_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
CODE_PATTERNS = ("*.py",)
TOP_LEVEL_ONLY = ("*/*",)  # fnmatch's * spans '/': this pattern is every sub-folder file
PROMPT_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet", ".txt")
# a name ending so is a file the user means, never a repository id
_FILE_SUFFIXES = PROMPT_SUFFIXES + (".safetensors", ".bin", ".pt", ".pth", ".toml", ".gguf")
_REPO = r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]"
_MODEL_ID = re.compile(rf"(?P<repo>{_REPO})(?:@(?P<rev>[^\s@]+))?")
_DATASET_ID = re.compile(rf"(?P<repo>{_REPO})(?:@(?P<rev>[^\s@/]+))?(?:/(?P<file>[^\s@]+))?")


@dataclass(frozen=True)
class HubId:
    """A parsed id: which repository, at which revision (None: the default branch), which file."""

    repo_id: str
    revision: str | None = None
    repo_type: str = "model"
    filename: str | None = None
    explicit: bool = False  # written with hf://: never read as a local path

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        if self.repo_type == "dataset":
            return f"{PREFIX}{DATASETS}{self.repo_id}{rev}" + (f"/{self.filename}" if self.filename else "")
        return f"{self.repo_id}{rev}"


@dataclass(frozen=True)
class HubSnapshot:
    """A repository resolved to one commit, and where its files lie in the cache."""

    repo_id: str
    revision: str
    commit: str
    path: Path
    repo_type: str = "model"

    def provenance(self) -> dict:
        """What manifests and summaries record beside the fingerprints."""
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            **({"repo_type": self.repo_type} if self.repo_type != "model" else {}),
        }


@dataclass(frozen=True)
class ModelLocation:
    """A model as the user gave it (`spec`), the local folder to read (`path`), and its Hub origin."""

    spec: str
    path: Path
    hub: HubSnapshot | None = None

    def __fspath__(self) -> str:
        return str(self.path)


# --- parsing ---------------------------------------------------------------------------------


def _valid_repo(repo: str) -> bool:
    return len(repo) <= 96 and "--" not in repo and ".." not in repo


def parse_hub_id(text) -> HubId | None:
    """The model (or patch) repository `text` names, or None when it reads as a local path."""
    if not isinstance(text, str):
        return None
    explicit = text.startswith(PREFIX)
    body = text[len(PREFIX) :] if explicit else text
    if body.startswith(DATASETS):
        return None
    m = _MODEL_ID.fullmatch(body)
    if m is None or not _valid_repo(m["repo"]):
        if explicit:
            raise DdalignError(f"{text}: expected hf://ORG/NAME or hf://ORG/NAME@REVISION")
        return None
    if not explicit and m["repo"].lower().endswith(_FILE_SUFFIXES):
        return None
    return HubId(m["repo"], m["rev"], explicit=explicit)


def parse_dataset_id(text) -> HubId | None:
    """`hf://datasets/ORG/NAME[@REVISION][/FILE]`, or None for anything else."""
    if not isinstance(text, str) or not text.startswith(PREFIX + DATASETS):
        return None
    body = text[len(PREFIX + DATASETS) :]
    m = _DATASET_ID.fullmatch(body)
    if m is None or not _valid_repo(m["repo"]):
        raise DdalignError(f"{text}: expected hf://datasets/ORG/NAME[@REVISION][/FILE]")
    return HubId(m["repo"], m["rev"], "dataset", m["file"], explicit=True)


def is_hub_id(text) -> bool:
    """True when `text` would be looked up on the Hub (if no local path of that name exists)."""
    try:
        return parse_hub_id(text) is not None or parse_dataset_id(text) is not None
    except DdalignError:
        return True


# --- the huggingface_hub calls ------------------------------------------------------------------


def _offline() -> bool:
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check() if callable(check) else constants.HF_HUB_OFFLINE)


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _error(hub_id: HubId, exc: Exception, what: str = "repository") -> DdalignError:
    """One line naming the id, what went wrong and what to set."""
    names = {c.__name__ for c in type(exc).__mro__}
    rev = hub_id.revision or "main"
    where = f"{hub_id.repo_id}@{rev}" if hub_id.repo_type == "model" else str(hub_id)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "GatedRepoError" in names:
        return DdalignError(
            f"{where}: a gated repository; accept its terms at https://huggingface.co/"
            f"{hub_id.repo_id} and set HF_TOKEN (or run `hf auth login`)"
        )
    if "RevisionNotFoundError" in names:
        return DdalignError(f"{where}: the Hub {what} has no revision {rev!r}")
    if "RepositoryNotFoundError" in names:
        return DdalignError(f"{where}: no such Hub {what} (or a private one: set HF_TOKEN)")
    if "IncompleteSnapshotError" in names:
        return DdalignError(
            f"{where}: the cached snapshot in {_cache_dir()} is incomplete; download it again "
            f"with the Hub reachable (unset HF_HUB_OFFLINE)"
        )
    if "LocalEntryNotFoundError" in names or "OfflineModeIsEnabled" in names:
        if _offline():
            return DdalignError(
                f"{where}: not a local path, and not in the Hub cache ({_cache_dir()}); "
                f"HF_HUB_OFFLINE=1 forbids downloading it: unset HF_HUB_OFFLINE (or set "
                f"HF_HUB_OFFLINE=0), or point HF_HOME / HF_HUB_CACHE at a cache that holds it"
            )
        return DdalignError(
            f"{where}: not a local path, not in the Hub cache ({_cache_dir()}), and the Hub cannot "
            f"be reached; connect, or set HF_HUB_OFFLINE=1 to use cached repositories only"
        )
    if "EntryNotFoundError" in names:
        return DdalignError(f"{where}: no such file in the Hub {what} ({first})")
    if "HFValidationError" in names:
        return DdalignError(f"{where}: not a valid Hub repository id ({first})")
    return DdalignError(f"{where}: Hub {what} unavailable ({type(exc).__name__}: {first})")


def _snapshot(hub_id: HubId, revision: str | None, allow: list[str], ignore=TOP_LEVEL_ONLY) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                hub_id.repo_id,
                repo_type=hub_id.repo_type,
                revision=revision,
                allow_patterns=allow,
                ignore_patterns=list(ignore),
            )
        )
    except (OSError, ValueError) as exc:  # huggingface_hub's errors derive from these
        raise _error(hub_id, exc) from None
    except Exception as exc:  # httpx errors and others of newer versions
        if type(exc).__module__.split(".")[0] in ("huggingface_hub", "httpx", "httpx2", "requests"):
            raise _error(hub_id, exc) from None
        raise


def _files(folder: Path, patterns) -> list[Path]:
    return sorted(p for p in folder.iterdir() if any(fnmatch.fnmatch(p.name, pat) for pat in patterns))


_MODELS: dict[tuple, HubSnapshot] = {}
_COMMITS: dict[tuple, str] = {}  # (cache, repo, revision as given) -> the commit it resolved to


def forget() -> None:
    """Drop the process's memory of resolved ids (the next resolution asks huggingface_hub again)."""
    _MODELS.clear()
    _COMMITS.clear()


def download_model(hub_id: HubId, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> HubSnapshot:
    """The model repository's reading files in the cache (downloaded unless cached), at one commit.

    First the small files (config, tokenizer, the safetensors index), then the weights at the
    commit that call resolved: the shards the index names (a repository may also hold other
    safetensors, e.g. a consolidated copy), else every top-level *.safetensors; pickle weights
    only when there are no safetensors and `allow_pickle`. Memoised per process, so every part of
    a run reads the same commit.
    """
    key = (_cache_dir(), hub_id.repo_id, hub_id.revision, allow_pickle, trust_remote_code)
    if key in _MODELS:
        return _MODELS[key]
    small = list(METADATA_PATTERNS) + [SAFETENSORS_INDEX] + (list(CODE_PATTERNS) if trust_remote_code else [])
    pinned = _COMMITS.get((_cache_dir(), hub_id.repo_id, hub_id.revision))  # resolved before in this process
    folder = _snapshot(hub_id, pinned or hub_id.revision, small)
    commit = folder.name
    _COMMITS[(_cache_dir(), hub_id.repo_id, hub_id.revision)] = commit
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise DdalignError(f"{hub_id}: {SAFETENSORS_INDEX} is not a safetensors index ({exc})") from None
        folder = _snapshot(hub_id, commit, shards)
    else:
        folder = _snapshot(hub_id, commit, list(SAFETENSORS_PATTERNS))
    if not _files(folder, SAFETENSORS_PATTERNS):
        pickled = _files(folder, PICKLE_PATTERNS)
        if not allow_pickle:
            seen = f" (the cache holds {pickled[0].name})" if pickled else ""
            raise DdalignError(
                f"{hub_id} (commit {commit[:12]}): no *.safetensors weights{seen}; pickle weights can "
                f"run code when loaded: pass --allow-pickle to download them and read them with "
                f"weights_only=True"
            )
        folder = _snapshot(hub_id, commit, list(PICKLE_PATTERNS))
        if not _files(folder, PICKLE_PATTERNS):
            raise DdalignError(
                f"{hub_id} (commit {commit[:12]}): no weights (neither *.safetensors nor "
                f"pytorch_model*.bin) in the repository"
            )
    if not (folder / "config.json").is_file():
        raise DdalignError(f"{hub_id} (commit {commit[:12]}): no config.json; expected a transformers model repository")
    snapshot = HubSnapshot(hub_id.repo_id, hub_id.revision or "main", commit, folder)
    log.info(f"{hub_id}: Hub commit {commit[:12]} ({folder})")
    _MODELS[key] = snapshot
    return snapshot


def _shadowed(text: str, hub_id: HubId | None) -> bool:
    """A local path named like an id wins over the Hub; say which was used."""
    if hub_id is None or hub_id.explicit or not Path(text).exists():
        return False
    log.warning(
        f"{text}: using the local {'folder' if Path(text).is_dir() else 'file'} {Path(text).resolve()}, "
        f"not the Hub repository {hub_id.repo_id} (write hf://{text} for the Hub one)"
    )
    return True


def resolve_model(spec, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> ModelLocation:
    """A model path or Hub id -> the local folder to read, and the Hub snapshot when it came from one.

    A path that does not exist and does not read as an id comes back unchanged: the caller's own
    'no such folder' error names it."""
    if isinstance(spec, ModelLocation):
        return spec
    text = os.fspath(spec)
    hub_id = parse_hub_id(text)
    if hub_id is None or _shadowed(text, hub_id):
        return ModelLocation(text, Path(text))
    snapshot = download_model(hub_id, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    return ModelLocation(text, snapshot.path, snapshot)


def provenance(spec, *, allow_pickle: bool = False) -> dict:
    """{'repo_id', 'revision', 'commit'} of a model given by Hub id; {} for a local path."""
    if hasattr(spec, "hub"):  # a ModelLocation, a Checkpoint, a judge
        return spec.hub.provenance() if spec.hub is not None else {}
    text = os.fspath(spec)
    hub_id = parse_hub_id(text)
    if hub_id is None or (not hub_id.explicit and Path(text).exists()):
        return {}
    commit = _COMMITS.get((_cache_dir(), hub_id.repo_id, hub_id.revision))
    if commit is not None:  # resolved before in this process: no new lookup
        return {"repo_id": hub_id.repo_id, "revision": hub_id.revision or "main", "commit": commit}
    return provenance(resolve_model(text, allow_pickle=allow_pickle))


def describe(section: dict | None) -> str:
    """A manifest's model section in a message: 'org/name@main (commit 0123456789ab)' or its path."""
    section = section or {}
    hub = section.get("hub") or {}
    if hub.get("repo_id"):
        return f"{hub['repo_id']}@{hub.get('revision') or 'main'} (commit {str(hub.get('commit'))[:12]})"
    return str(section.get("path") or "unknown")


# --- patches ---------------------------------------------------------------------------------


def resolve_patch(spec) -> tuple[Path, HubSnapshot | None]:
    """A patch file, or a Hub repository holding one *.safetensors with a ddalign manifest."""
    from ddalign.io.checkpoint import read_header

    text = os.fspath(spec)
    hub_id = parse_hub_id(text)
    if hub_id is None or _shadowed(text, hub_id):
        return Path(text), None
    folder = _snapshot(hub_id, hub_id.revision, list(SAFETENSORS_PATTERNS))
    candidates = _files(folder, SAFETENSORS_PATTERNS)
    patches = [p for p in candidates if "ddalign" in (read_header(p)[0].get("__metadata__") or {})]
    if len(patches) != 1:
        found = ", ".join(p.name for p in candidates) or "no *.safetensors"
        raise DdalignError(
            f"{hub_id} (commit {folder.name[:12]}): expected one *.safetensors with a ddalign manifest "
            f"at the repository's top level, found {len(patches)} ({found})"
        )
    snapshot = HubSnapshot(hub_id.repo_id, hub_id.revision or "main", folder.name, folder)
    log.info(f"{hub_id}: patch {patches[0].name} at Hub commit {folder.name[:12]}")
    return patches[0], snapshot


# --- prompt sets -------------------------------------------------------------------------------


def download_prompt_file(spec: str) -> tuple[Path, str]:
    """`hf://datasets/ORG/NAME[@REV][/FILE]` -> (local file, its pinned description
    `hf://datasets/ORG/NAME@COMMIT/FILE`). Without FILE the repository must hold exactly one
    prompt file (csv, jsonl, json, parquet, txt)."""
    hub_id = parse_dataset_id(spec)
    if hub_id is None:
        raise DdalignError(f"{spec}: expected hf://datasets/ORG/NAME[@REVISION][/FILE]")
    if hub_id.filename:
        from huggingface_hub import hf_hub_download

        try:
            file = Path(hf_hub_download(hub_id.repo_id, hub_id.filename, repo_type="dataset", revision=hub_id.revision))
        except Exception as exc:
            if isinstance(exc, (OSError, ValueError)) or type(exc).__module__.startswith("huggingface_hub"):
                raise _error(hub_id, exc, "dataset") from None
            raise
        root = file.parents[len(PurePosixPath(hub_id.filename).parts) - 1]
    else:
        root = _snapshot(hub_id, hub_id.revision, [f"*{s}" for s in PROMPT_SUFFIXES], ignore=())
        found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in PROMPT_SUFFIXES)
        if len(found) != 1:
            names = ", ".join(p.relative_to(root).as_posix() for p in found[:6]) or "none"
            raise DdalignError(
                f"{spec}: the dataset holds {len(found)} prompt files ({names}); name one: "
                f"{PREFIX}{DATASETS}{hub_id.repo_id}/FILE"
            )
        file = found[0]
    relative = file.relative_to(root).as_posix() if file.is_relative_to(root) else file.name
    return file, f"{PREFIX}{DATASETS}{hub_id.repo_id}@{root.name}/{relative}"


# --- messages and records ------------------------------------------------------------------------


def base_mismatch_text(patch, target, spec, differing: list[str], checked: int) -> str:
    """apply's and minimise's base-check message, naming both models with their Hub ids and commits:
    'org/ft@main (commit ...): 3 of 4 patched tensors differ from the unaligned model the patch was
    made from, org/base@main (commit ...) (first: ...)'."""
    hub = provenance(target) if hasattr(target, "hub") else _known(spec)
    given = f"{spec} (commit {hub['commit'][:12]})" if hub else str(spec)
    return (
        f"{given}: {len(differing)} of {checked} patched tensors differ from the unaligned model the patch was "
        f"made from, {describe(patch.manifest.get('unaligned'))} (first: {differing[0]})"
    )


def _known(spec) -> dict:
    try:
        return provenance(spec)
    except DdalignError:
        return {}


def run_models(manifest: dict, target) -> dict:
    """The models of a minimise run for its summary: aligned and unaligned (and an additive
    bundle's common parent, "base") from the bundle's manifest, the target as given; each
    {'path', 'hub'?} (the Hub repository and commit)."""
    roles = ("aligned", "unaligned", "base") if manifest.get("base") else ("aligned", "unaligned")
    models = {role: {k: v for k, v in (manifest.get(role) or {}).items() if k in ("path", "hub")} for role in roles}
    hub = _known(target)
    models["target"] = {"path": str(getattr(target, "spec", target)), **({"hub": hub} if hub else {})}
    return models


def show_messages(print_line) -> None:
    """Send ddalign's messages (which folder or Hub commit a model id resolved to) to `print_line`,
    once per process: the CLI prints them on stderr."""
    logger = logging.getLogger("ddalign")
    if any(getattr(h, "ddalign_cli", False) for h in logger.handlers):
        return

    class _Handler(logging.Handler):
        ddalign_cli = True

        def emit(self, record: logging.LogRecord) -> None:
            print_line(record.getMessage())

    logger.addHandler(_Handler(logging.INFO))
    logger.setLevel(logging.INFO)
