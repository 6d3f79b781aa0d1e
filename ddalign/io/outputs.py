"""Output paths: what a command may write, what it may replace, one writer at a time, and no debris.

Rules, checked before any work starts:
- an output is never an input, inside one, or around one (target, patch, bundle, config, prompts);
- an output is never the current folder or one that holds it;
- `overwrite` replaces only what ddalign writes: a checkpoint folder (config.json + safetensors and
  nothing else, or what its `.ddalign-written.json` lists), a ddalign patch file, a run folder, a
  refusals study folder;
  anything else needs `overwrite_any`;
- a writer holds a lock beside its output (`.NAME.lock`, with its pid); a second writer is refused,
  and the holder clears stale temporaries of the output's own naming (`.NAME.<random>.tmp`, `.NAME.old`)
  that a killed run left.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from ddalign.errors import DdalignError

WRITTEN = ".ddalign-written.json"
"""Inside a checkpoint folder ddalign wrote: the files it wrote (so that `overwrite` knows them)."""

CHECKPOINT_FILES = re.compile(
    r"^(config\.json|generation_config\.json|.*\.safetensors|model\.safetensors\.index\.json|tokenizer\.json|"
    r"tokenizer_config\.json|tokenizer\.model|special_tokens_map\.json|vocab\.(json|txt)|merges\.txt|"
    r"added_tokens\.json|chat_template\.(jinja|json)|planted\.json)$"
)
"""Files a Hugging Face checkpoint folder holds; a folder with anything else is not replaced by --overwrite."""

RUN_FILES = re.compile(r"^(journal\.jsonl|config\.json|calibration\.json|summary\.json|report\.(md|json)|.*\.png)$")
REFUSALS_FILES = re.compile(r"^(refusals\.json|.*\.png)$")
"""What a `ddalign refusals` folder holds: the study's JSON and one chart per model."""


def _resolved(path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _related(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_not_input(out, inputs: Mapping[str, object], *, role: str = "output") -> None:
    """Refuse an output that is, holds or lies inside an input, or the current folder (or one holding it)."""
    target = _resolved(out)
    real = Path(os.path.realpath(target))
    cwd = Path.cwd().resolve()
    if cwd == real or cwd.is_relative_to(real):
        raise DdalignError(f"{role} {out}: is the current folder or holds it; name a new folder")
    for name, path in inputs.items():
        if path is None:
            continue
        source = _resolved(path)
        if _related(target, source) or _related(real, Path(os.path.realpath(source))):
            if target == source or real == Path(os.path.realpath(source)):
                how = "is"
            elif source.is_relative_to(target) or Path(os.path.realpath(source)).is_relative_to(real):
                how = "holds"
            else:
                how = "lies inside"
            raise DdalignError(f"{role} {out}: {how} the {name} {path}; write the output elsewhere")


def check_file_target(out, *, what: str = "file") -> Path:
    """A file output: not a folder (nor named as one), and its folder can be created and written."""
    text = str(out)
    path = Path(out)
    if text.endswith(("/", os.sep)) or path.is_dir() or path.name in ("", ".", ".."):
        raise DdalignError(f"{out}: is a folder; expected a {what} path")
    _check_parent_writable(path, out)
    return path


def _check_parent_writable(path: Path, shown) -> None:
    parent = _resolved(path).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DdalignError(f"{shown}: cannot be written ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DdalignError(f"{shown}: cannot be written (no write permission in {parent})")


def is_ddalign_patch(path: Path) -> bool:
    """A safetensors file holding a ddalign manifest."""
    try:
        from ddalign.io.checkpoint import read_header

        header, _ = read_header(path)
    except (DdalignError, OSError):
        return False
    return "ddalign" in (header.get("__metadata__") or {})


def looks_like_written_checkpoint(folder: Path) -> bool:
    """config.json + safetensors weights, and nothing else than checkpoint files (or what ddalign
    recorded writing there)."""
    if not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir()}
    listed: set[str] = set()
    if WRITTEN in names:
        try:
            listed = set(json.loads((folder / WRITTEN).read_text()).get("files", []))
        except (OSError, ValueError, AttributeError):
            listed = set()
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        return False
    others = [n for n in names - {WRITTEN} - listed if not CHECKPOINT_FILES.match(n)]
    return not others and all((folder / n).is_file() for n in names)


def check_replaceable(
    out, *, kind: str, overwrite: bool, overwrite_any: bool = False, flag: str = "--overwrite"
) -> None:
    """May `out` be written? Refused when it exists and `overwrite` is off, or when it is not what
    ddalign writes (`kind`: checkpoint, patch, organism, run, refusals) and `overwrite_any` is off."""
    path = Path(out)
    if not path.exists() and not path.is_symlink():
        return
    if not (overwrite or overwrite_any):
        raise DdalignError(f"{out}: output exists; pass {flag} to replace it")
    if overwrite_any:
        return
    ok = {
        "checkpoint": looks_like_written_checkpoint,
        "patch": lambda p: p.is_file() and is_ddalign_patch(p),
        "organism": lambda p: p.is_dir() and ((p / "organism.json").is_file() or not any(p.iterdir())),
        "pair": lambda p: p.is_dir() and ((p / "pair.json").is_file() or not any(p.iterdir())),
        "run": lambda p: p.is_dir() and all(RUN_FILES.match(c.name) or c.name.startswith(".") for c in p.iterdir()),
        "refusals": lambda p: (
            p.is_dir()
            and all((REFUSALS_FILES.match(c.name) and c.is_file()) or c.name.startswith(".") for c in p.iterdir())
        ),
    }[kind](path)
    if not ok:
        what = {
            "checkpoint": "a checkpoint folder ddalign wrote (config.json + safetensors, no other files)",
            "patch": "a ddalign patch file",
            "organism": "an organism folder (organism.json)",
            "pair": "a real pair's folder (pair.json)",
            "run": "a minimise run folder",
            "refusals": "a refusals study folder (refusals.json and PNG charts only)",
        }[kind]
        hint = (
            "; pass --overwrite-any to replace it anyway"
            if kind in ("checkpoint", "patch")
            else "; remove it yourself or choose another output"
        )
        raise DdalignError(f"{out}: exists and is not {what}{hint}")


def check_output(
    out, inputs: Mapping[str, object], *, kind: str, overwrite: bool = False, overwrite_any: bool = False
) -> None:
    """The whole output rule for one main output (see the module docstring)."""
    check_not_input(out, inputs)
    if kind == "patch":
        check_file_target(out, what=".safetensors file")
    else:
        if Path(out).exists() and not Path(out).is_dir() and not overwrite_any:
            if overwrite:
                raise DdalignError(f"{out}: exists and is a file, not a folder; pass --overwrite-any to replace it")
        _check_parent_writable(Path(out), out)
    check_replaceable(out, kind=kind, overwrite=overwrite, overwrite_any=overwrite_any)


def record_written(folder: Path, files: Iterable[str]) -> None:
    """Note which files ddalign wrote into a checkpoint folder (read by `looks_like_written_checkpoint`)."""
    (folder / WRITTEN).write_text(json.dumps({"files": sorted(files)}) + "\n")


# --- modes ------------------------------------------------------------------------------------


def umask() -> int:
    """The process's umask (read by setting and restoring it: there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path, *, folder: bool = False) -> None:
    """Temporary files are made 0600 / 0700; the finished output gets the user's usual mode."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


# --- locks and stale temporaries --------------------------------------------------------------


def lock_path(out) -> Path:
    out = _resolved(out)
    return out.with_name(f".{out.name}.lock")


def _temporaries(out: Path) -> list[Path]:
    """`.NAME.<random>.tmp`, `.NAME.old`, `.NAME.tmp.png`; and `.NAME.<8 random>` folders of an
    organism build from before builds named theirs `.tmp` (only when they hold a build's folders)."""
    name = re.escape(out.name)
    ours = re.compile(rf"^\.{name}\.(.+\.tmp|old|tmp\.png)$")
    legacy = re.compile(rf"^\.{name}\.[a-z0-9_]{{8}}$")
    if not out.parent.is_dir():
        return []

    def legacy_build(p: Path) -> bool:
        return (
            legacy.match(p.name) is not None
            and p.is_dir()
            and not p.is_symlink()
            and all(c.name in ("base", "unaligned", "aligned", "planted") for c in p.iterdir())
        )

    return sorted(p for p in out.parent.iterdir() if ours.match(p.name) or legacy_build(p))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def output_lock(out, *, say: Callable[[str], None] | None = None) -> Iterator[list[Path]]:
    """Hold `.NAME.lock` beside `out` for the write; refuse when another live process holds it.

    The lock is an flock (released by the kernel when its holder dies, however it dies) on a file
    holding the pid (for the message). Once held, temporaries of this output's naming are
    stale by construction (their writer held this lock and is gone): they are removed, and said.
    Yields the removed paths.
    """
    out = _resolved(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(out)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() and _pid_alive(int(holder)) else "another process"
            raise DdalignError(
                f"{out}: {who} is writing this output now (lock {path}); wait for it to finish or choose another output"
            ) from None
        # the file may have been unlinked by its last holder between our open and our lock: retry
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        removed = []
        for stale in _temporaries(out):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed.append(stale)
        if removed:
            text = f"removed {len(removed)} stale temporary file(s) of an interrupted run beside {out}: " + ", ".join(
                p.name for p in removed
            )
            if say is not None:
                say(text)
            else:
                import warnings

                from ddalign.errors import DdalignWarning

                warnings.warn(text, DdalignWarning, stacklevel=3)
        yield removed
    finally:
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)


# --- signals ----------------------------------------------------------------------------------


def terminate_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt, so a terminated run cleans up as an interrupted one does."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave the default
        pass
