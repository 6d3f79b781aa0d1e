"""The `ddalign` command line: thin click commands over the library API; no logic of its own."""
from __future__ import annotations

import sys

import click
from rich.console import Console

from ddalign import __version__
from ddalign.errors import DdalignError

console = Console(stderr=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ddalign")
def cli() -> None:
    """Transplant a minimal set of alignment blocks from an aligned model into an unaligned sibling."""


# --- extract / apply (foundation) -------------------------------------------------------------

# --- evaluate ---------------------------------------------------------------------------------

# --- organism ---------------------------------------------------------------------------------

# --- minimise / report / demo -----------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        cli.main(args=argv, prog_name="ddalign", standalone_mode=False)
    except DdalignError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
