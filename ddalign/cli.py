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

@cli.command("evaluate")
@click.argument("model", type=click.Path(path_type=str))
@click.option("--patch", "patch", default=None, help="Patch (.safetensors) applied in memory for the evaluation.")
@click.option("--harmful", default=None, help="Harmful prompts (csv/json/jsonl/txt, builtin:NAME, or none). Default: built-in held-out set.")
@click.option("--safe", default=None, help="Safe-but-scary prompts for over-refusal (file, builtin:NAME, or none).")
@click.option("--benign", default=None, help="Benign prompts with references for accuracy and perplexity (file, builtin:NAME, or none).")
@click.option("--column", default=None, help="Column / field holding the prompt in the data files.")
@click.option("--judge", default="keyword", show_default=True, help="'keyword' or a local classifier model folder.")
@click.option("--refusal-marker", "refusal_markers", multiple=True, help="Extra refusal marker (repeatable).")
@click.option("--refusal-markers", "refusal_markers_file", default=None, type=click.Path(path_type=str),
              help="Text file of extra refusal markers, one a line.")
@click.option("--refusal-label", "refusal_labels", multiple=True, help="Classifier judge: label meaning refusal (repeatable).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--template", default=None, help="Prompt template with {prompt} ('chat' = the tokenizer's chat template; default: chat template if any, else an Alpaca-style one).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present).")
@click.option("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on GPU, float32 on CPU).")
@click.option("--limit", type=int, default=None, help="Use only the first N prompts of each set.")
@click.option("--no-early-stop", is_flag=True, help="Generate every answer to the end (no per-row stop once a refusal is decided).")
@click.option("--accuracy-match", type=click.Choice(["contains", "exact"]), default="contains", show_default=True)
@click.option("--keep-answers", is_flag=True, help="Store every answer in the JSON record.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) weights, loaded with weights_only=True.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the checkpoint folder.")
@click.option("--json", "json_out", default=None, type=click.Path(path_type=str), help="Write the JSON record here (atomically).")
@click.option("--config", "config_file", default=None, type=click.Path(path_type=str),
              help="JSON/TOML file of these options (command line wins).")
@click.pass_context
def evaluate_cmd(ctx: click.Context, model: str, **options) -> None:
    """Evaluate MODEL: defense success, over-refusal, perplexity, benign accuracy (with 95% intervals)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ddalign.evaluate.generate import GenerationConfig
    from ddalign.evaluate.judges import make_judge
    from ddalign.evaluate.runner import evaluate_model, load_options_file, metrics_table

    if options["config_file"]:
        names = {p.name: p.name for p in ctx.command.params}
        names.update({o.lstrip("-").replace("-", "_"): p.name for p in ctx.command.params for o in p.opts})
        for given, value in load_options_file(options["config_file"]).items():
            key = names.get(given)
            if key is None or key in ("config_file", "model"):
                raise DdalignError(f"{options['config_file']}: unknown option {given!r}")
            if ctx.get_parameter_source(key) == click.core.ParameterSource.DEFAULT:
                options[key] = tuple(value) if isinstance(value, list) else value
    o = options
    judge = make_judge(o["judge"], markers=o["refusal_markers"], markers_file=o["refusal_markers_file"],
                       refusal_labels=o["refusal_labels"] or None, device=o["device"], dtype=o["dtype"],
                       allow_pickle=o["allow_pickle"])
    config = GenerationConfig(max_new_tokens=o["max_new_tokens"], batch_size=o["batch_size"],
                              template=o["template"], device=o["device"], dtype=o["dtype"])
    columns = (TextColumn("{task.description:<11}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        record = evaluate_model(model, patch=o["patch"], harmful=o["harmful"], safe=o["safe"],
                                benign=o["benign"], column=o["column"], judge=judge, config=config,
                                limit=o["limit"], early_stop=not o["no_early_stop"],
                                accuracy_match=o["accuracy_match"], keep_answers=o["keep_answers"],
                                device=o["device"], dtype=o["dtype"], allow_pickle=o["allow_pickle"],
                                trust_remote_code=o["trust_remote_code"], progress=progress)
    Console().print(metrics_table(record))
    if o["json_out"]:
        record.save(o["json_out"])
        console.print(f"wrote {o['json_out']}")


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
