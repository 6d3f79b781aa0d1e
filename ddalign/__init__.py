"""ddalign: minimal alignment transplants found by delta debugging (DAPA, arXiv 2406.01514)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "Patch", "apply_patch", "patched", "extract", "apply_to_folder", "convert_gguf"]


def __getattr__(name: str):
    # Lazy: `import ddalign` stays cheap (no torch import) for the CLI's --help.
    if name in {"Patch", "apply_patch", "patched", "apply_to_folder"}:
        from ddalign.transfer import apply as _patch

        return getattr(_patch, name)
    if name == "extract":
        from ddalign.transfer.extract import extract

        return extract
    if name == "convert_gguf":
        from ddalign.io.gguf import convert_gguf

        return convert_gguf
    raise AttributeError(f"module 'ddalign' has no attribute {name!r}")
