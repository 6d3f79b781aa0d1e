"""The `ddalign` command line: thin click commands over the library API; no logic of its own."""
from __future__ import annotations

import contextlib
import sys
import warnings

import click
from rich.console import Console

from ddalign import __version__
from ddalign.errors import DdalignError, DdalignWarning

console = Console(stderr=True)
warnings.filterwarnings("always", category=DdalignWarning)     # each doubtful input said, every time


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ddalign")
def cli() -> None:
    """Transplant a minimal set of alignment blocks from an aligned model into an unaligned sibling."""


# --- extract / apply (foundation) -------------------------------------------------------------

@cli.command("extract")
@click.option("--aligned", required=True, type=click.Path(path_type=str), help="The aligned model folder.")
@click.option("--unaligned", required=True, type=click.Path(path_type=str), help="The unaligned sibling (same base).")
@click.option("--scope", default="mlp.gate", show_default=True,
              help="mlp.gate, mlp, attn, all, a module name, or component patterns (L*.mlp.gate,L*.attn.o).")
@click.option("--layers", default=None, help="Layer range, e.g. 8-20 or 3,5-7.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=str), help="Bundle file (.safetensors).")
@click.option("--plot", default=None, type=click.Path(path_type=str), help="Layer x module heatmap of the relative delta (PNG).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle file (a ddalign patch or bundle).")
@click.option("--overwrite-any", is_flag=True, help="Replace the output even if it is not a ddalign file.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) weights, read with weights_only=True.")
def extract_cmd(aligned: str, unaligned: str, scope: str, layers: str | None, out: str, plot: str | None,
                overwrite: bool, overwrite_any: bool, allow_pickle: bool) -> None:
    """Write the alignment delta bundle of ALIGNED over UNALIGNED (streamed, tensor by tensor)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from ddalign.io.outputs import check_file_target, check_not_input, check_output
    from ddalign.transfer.extract import extract, layer_table, plot_heatmap

    inputs = {"aligned model": aligned, "unaligned model": unaligned}
    check_output(out, inputs, kind="patch", overwrite=overwrite, overwrite_any=overwrite_any)
    if plot:
        check_not_input(plot, {**inputs, "bundle": out}, role="--plot")
        check_file_target(plot, what="PNG file")
    with Progress("extract", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task("extract", total=None)
        bundle = extract(aligned, unaligned, scope=scope, layers=layers, out=out, allow_pickle=allow_pickle,
                         progress=lambda done, total: bar.update(task, completed=done, total=total))
    _stdout().print(_layer_stats_table(layer_table(bundle), bundle))
    if plot:
        console.print(f"heatmap: {plot_heatmap(bundle, plot)}")
    console.print(f"bundle: {out} ({len(bundle.components())} components, {bundle.params():,} parameters)")


def _layer_stats_table(rows: list[dict], bundle):
    from rich.table import Table

    modules = sorted({m for r in rows for m in r["modules"]})
    table = Table(title=f"relative delta ||A-U||/||U|| per layer (scope {bundle.manifest.get('scope')})")
    table.add_column("layer", justify="right")
    table.add_column("params", justify="right")
    for m in modules:
        table.add_column(m, justify="right")
    for r in rows:
        table.add_row(str(r["layer"]), f"{r['params']:,}",
                      *("-" if r["modules"].get(m) is None else f"{r['modules'][m]:.4f}" for m in modules))
    return table


@cli.command("apply")
@click.argument("patch", type=click.Path(path_type=str))
@click.option("--to", "target", required=True, type=click.Path(path_type=str), help="Checkpoint folder to patch.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=str), help="Output checkpoint folder.")
@click.option("--components", default=None, help="Apply only these components (comma-separated patterns or blocks).")
@click.option("--max-shard-size", default="5GB", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder that ddalign wrote (a checkpoint).")
@click.option("--overwrite-any", is_flag=True, help="Replace the output even if it is not a checkpoint ddalign wrote.")
@click.option("--allow-other-base", is_flag=True,
              help="Apply to a checkpoint other than the unaligned model the patch was made from.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) weights, read with weights_only=True.")
def apply_cmd(patch: str, target: str, out: str, components: str | None, max_shard_size: str, overwrite: bool,
              overwrite_any: bool, allow_other_base: bool, allow_pickle: bool) -> None:
    """Write TARGET with PATCH applied to OUT; every other tensor byte-identical."""
    from ddalign.transfer.apply import apply_to_folder

    report = apply_to_folder(patch, target, out, components=components, allow_other_base=allow_other_base,
                             overwrite=overwrite, max_shard_size=max_shard_size, allow_pickle=allow_pickle,
                             overwrite_any=overwrite_any, say=lambda text: console.print(f"note: {text}"))
    if report.differing_base:
        console.print(f"note: {len(report.differing_base)} of {report.checked} patched tensors differed from the "
                      f"patch's unaligned model (--allow-other-base)")
    console.print(f"patched {report.tensors_patched} tensors ({len(report.components)} components) -> {report.out}")

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
@click.option("--max-prompt-tokens", type=int, default=None,
              help="Longer prompts keep their last tokens (and BOS); default: the model's context "
                   "minus --max-new-tokens.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--template", default=None, help="Prompt template with {prompt} ('chat' = the tokenizer's chat template; default: chat template if any, else an Alpaca-style one).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present).")
@click.option("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on GPU, float32 on CPU).")
@click.option("--limit", type=int, default=None, help="Use only N prompts of each set, evenly spaced over it (sets are often grouped by category).")
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
    if o["json_out"]:
        from ddalign.io.outputs import check_file_target, check_not_input

        check_not_input(o["json_out"], {"model": model, "patch": o["patch"], "harmful prompts": o["harmful"],
                                        "safe prompts": o["safe"], "benign prompts": o["benign"],
                                        "config": o["config_file"], "markers": o["refusal_markers_file"]},
                        role="--json")
        check_file_target(o["json_out"], what="JSON file")
    judge = make_judge(o["judge"], markers=o["refusal_markers"], markers_file=o["refusal_markers_file"],
                       refusal_labels=o["refusal_labels"] or None, device=o["device"], dtype=o["dtype"],
                       allow_pickle=o["allow_pickle"])
    config = GenerationConfig(max_new_tokens=o["max_new_tokens"], batch_size=o["batch_size"],
                              template=o["template"], device=o["device"], dtype=o["dtype"],
                              max_prompt_tokens=o["max_prompt_tokens"])
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
    _stdout().print(metrics_table(record))
    truncated = record.generation.get("truncated_prompts")
    if truncated:
        console.print(f"warning: {truncated} prompt(s) longer than {record.generation['max_prompt_tokens']} tokens "
                      f"were cut to their last tokens (--max-prompt-tokens)")
    if o["json_out"]:
        record.save(o["json_out"])
        console.print(f"wrote {o['json_out']}")


# --- organism ---------------------------------------------------------------------------------

@cli.group("organism")
def organism_group() -> None:
    """The built-in model organism: a tiny base, an unaligned, an aligned and a planted aligned sibling."""


@organism_group.command("build")
@click.option("--preset", type=click.Choice(["fast", "standard"]), default="standard", show_default=True)
@click.option("--out", default=None, type=click.Path(path_type=str), help="Folder (default: the user cache).")
@click.option("--force", is_flag=True, help="Rebuild even if a cached build exists.")
def organism_build_cmd(preset: str, out: str | None, force: bool) -> None:
    """Build the organism (cached: a second call returns at once)."""
    from ddalign.organism import build

    organism = build(preset, out=out, force=force)
    _print_organism(organism)


@organism_group.command("info")
@click.option("--preset", type=click.Choice(["fast", "standard"]), default="standard", show_default=True)
def organism_info_cmd(preset: str) -> None:
    """Where the organism lies and its measured metrics (held-out sets)."""
    from ddalign.organism import load

    _print_organism(load(preset))


def _print_organism(organism) -> None:
    from ddalign.run.tables import comparison_table

    rows = {name.replace("_", " "): {"metrics": m, "param_share": None} for name, m in organism.metrics.items()}
    _stdout().print(comparison_table(rows, title=f"organism ({organism.preset}), held-out sets"))
    console.print(f"folder: {organism.root}\nplanted components: {', '.join(organism.planted_components)}")

# --- minimise / report / demo -----------------------------------------------------------------

def _data_options(f):
    """The prompt-set options shared by minimise and demo (each None = the config's value)."""
    for name, text in reversed([
            ("--harmful", "Harmful prompts the search tests on (file or builtin:NAME)."),
            ("--safe", "Safe-but-scary prompts for the over-refusal guard (file, builtin:NAME, or none)."),
            ("--benign", "Benign prompts with references for the perplexity / accuracy guards (file, builtin:NAME, or none)."),
            ("--eval-harmful", "Held-out harmful prompts for the final numbers."),
            ("--eval-safe", "Held-out safe-but-scary prompts for the final numbers."),
            ("--eval-benign", "Held-out benign prompts for the final numbers.")]):
        f = click.option(name, default=None, help=text)(f)
    return f


def _minimise_overrides(o: dict) -> dict:
    """Command-line options -> config sections (None: leave the config file's value)."""
    return {
        "search": {"algorithm": o["algorithm"], "granularity": o["granularity"], "block_size": o["block_size"],
                   "assume_monotone": o["assume_monotone"], "layers": o["layers"]},
        "oracle": {"target_dsr": o["target_dsr"], "target_fraction": o["target_fraction"],
                   "target_confidence": o["target_confidence"],
                   "max_ppl_increase": o["max_ppl_increase"], "max_accuracy_drop": o["max_accuracy_drop"],
                   "max_over_refusal_rise": o["max_over_refusal_rise"],
                   "over_refusal_reference": o["over_refusal_reference"]},
        "judge": {"kind": o["judge"], "markers": list(o["refusal_markers"]) or None},
        "generation": {"max_new_tokens": o["max_new_tokens"], "batch_size": o["batch_size"],
                       "template": o["template"], "device": o["device"], "dtype": o["dtype"]},
        "data": {k: o[k] for k in ("harmful", "safe", "benign", "eval_harmful", "eval_safe", "eval_benign",
                                   "column", "limit")},
    }


@cli.command("minimise")
@click.argument("bundle", type=click.Path(path_type=str, exists=True, dir_okay=False))
@click.option("--target", required=True, type=click.Path(path_type=str), help="The unaligned model folder to patch.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=str),
              help="Output patch (.safetensors); journal and report go to OUT.run/.")
@click.option("--config", "config_file", default=None, help="Preset name (e.g. llama2, organism) or TOML file; options win.")
@click.option("--algorithm", type=click.Choice(["hierarchical", "probdd", "ddmin"]), default=None,
              help="Search algorithm (default hierarchical: layer -> module -> row block, ProbDD at each level).")
@click.option("--granularity", default=None, help="Levels, coarse to fine: e.g. layer,module,block.")
@click.option("--block-size", type=int, default=None, help="Rows per block at the block level (default: 1/8 of a module).")
@click.option("--layers", default=None, help="Search only these layers of the bundle, e.g. 8-20.")
@click.option("--assume-monotone/--no-assume-monotone", default=None,
              help="Treat a superset of a passing set as passing (fewer tests).")
@click.option("--target-dsr", type=float, default=None, help="Absolute DSR a candidate must reach.")
@click.option("--target-fraction", type=float, default=None, help="Or: this fraction of the full transplant's DSR.")
@click.option("--target-confidence", type=float, default=None,
              help="Ask the DSR's one-sided Wilson lower bound at this level (e.g. 0.9) to reach the target, so "
                   "that what the search keeps holds on new prompts.")
@click.option("--max-ppl-increase", type=float, default=None, help="Guard: relative perplexity rise allowed (0.05 = 5%).")
@click.option("--max-accuracy-drop", type=float, default=None, help="Guard: benign accuracy drop allowed (absolute).")
@click.option("--max-over-refusal-rise", type=float, default=None, help="Guard: over-refusal rise allowed (absolute).")
@click.option("--over-refusal-reference", type=click.Choice(["target", "full"]), default=None,
              help="Count the over-refusal rise from the target's (default) or the full transplant's.")
@_data_options
@click.option("--column", default=None, help="Column / field holding the prompt in the data files.")
@click.option("--limit", type=int, default=None, help="Use only N prompts of each set, evenly spaced over it (sets are often grouped by category).")
@click.option("--judge", default=None, help="'keyword' or a local classifier model folder.")
@click.option("--refusal-marker", "refusal_markers", multiple=True, help="Extra refusal marker (repeatable).")
@click.option("--max-new-tokens", type=int, default=None, help="Tokens generated per oracle prompt.")
@click.option("--batch-size", type=int, default=None)
@click.option("--template", default=None, help="Prompt template with {prompt}, or 'chat'.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present).")
@click.option("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on GPU, float32 on CPU).")
@click.option("--device-map", default=None, help="accelerate device map for a model larger than one GPU (e.g. auto).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its journal (no test repeated).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output patch and run folder.")
@click.option("--allow-other-base", is_flag=True, help="Search on a target other than the bundle's unaligned model.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) weights, loaded with weights_only=True.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the checkpoint folder.")
@click.option("--json", "json_out", default=None, type=click.Path(path_type=str), help="Write the run summary here too.")
def minimise_cmd(bundle: str, target: str, out: str, config_file: str | None, **o) -> None:
    """Find a minimal subset of BUNDLE whose transplant makes --target pass the oracle."""
    from ddalign.run.config import load_config, merge, DEFAULTS
    from ddalign.evaluate.distributed import launched_as_main
    from ddalign.run.live import LiveSearchView
    from ddalign.run.minimise import minimise

    config = merge(DEFAULTS, load_config(config_file) if config_file else {}, _minimise_overrides(o))
    if o["json_out"]:
        from ddalign.io.outputs import check_file_target, check_not_input

        check_not_input(o["json_out"], {"bundle": bundle, "target": target, "patch": out}, role="--json")
        check_file_target(o["json_out"], what="JSON file")
    main = launched_as_main()
    view = LiveSearchView(console) if main else None   # under accelerate: one live view, one log
    try:
        with view or _quiet():
            result = minimise(bundle, target, out, config=config, resume=o["resume"], overwrite=o["overwrite"],
                              allow_other_base=o["allow_other_base"], allow_pickle=o["allow_pickle"],
                              trust_remote_code=o["trust_remote_code"], device_map=o["device_map"],
                              view=view, log=view.message if view else None)
    except KeyboardInterrupt:
        if main:
            console.print("interrupted: the journal is saved; continue with the same command and --resume")
        raise SystemExit(130)
    if not main:
        return
    _print_run(result.summary, result.run_dir)
    if o["json_out"]:
        from ddalign.io.atomic import write_json_atomic

        write_json_atomic(o["json_out"], result.summary)


@contextlib.contextmanager
def _quiet():
    """No transformers progress bars (a process other than rank 0 prints nothing)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _print_run(summary: dict, run_dir) -> None:
    from ddalign.run.tables import summary_table

    _stdout().print(summary_table(summary))
    console.print(f"patch: {summary['patch']}   report: {run_dir}/report.md")


@cli.command("report")
@click.argument("run_dir", type=click.Path(path_type=str, exists=True, file_okay=False))
def report_cmd(run_dir: str) -> None:
    """(Re)write the report of a minimise run folder (OUT.run/): Markdown, PNG plots, JSON."""
    import json
    from pathlib import Path

    from ddalign.run.report import write_report

    paths = write_report(run_dir)
    _print_run(json.loads((Path(run_dir) / "summary.json").read_text()), run_dir)
    console.print(f"written: {paths.markdown}, {paths.trajectory}, {paths.kept_map}, {paths.json}")


@cli.command("demo")
@click.option("--out", default="ddalign-demo", show_default=True, type=click.Path(path_type=str),
              help="Folder for the bundle, patch, report and patched checkpoint (replaced on the next run).")
@click.option("--preset", type=click.Choice(["fast", "standard"]), default="standard", show_default=True,
              help="Model-organism preset (built once, then cached).")
@click.option("--sibling", type=click.Choice(["planted", "natural"]), default="planted", show_default=True,
              help="Aligned sibling: planted (alignment in known components: ground truth) or natural.")
@click.option("--scope", default=None, help="Scope of the extracted bundle (default: the config's search.scope, all).")
@click.option("--config", "config_file", default=None, help="Preset name or TOML file (default: organism).")
@click.option("--overwrite", is_flag=True, help="Replace --out even if it is not a demo folder.")
def demo_cmd(out: str, preset: str, sibling: str, scope: str | None, config_file: str | None, overwrite: bool) -> None:
    """The whole flow on the built-in model organism: build, extract, minimise, apply, evaluate."""
    from ddalign.run.config import load_config, merge, DEFAULTS
    from ddalign.run.demo import run_demo
    from ddalign.run.live import LiveSearchView
    from ddalign.run.tables import comparison_table

    config = merge(DEFAULTS, load_config(config_file or "organism"), {})
    view = LiveSearchView(console)
    with view:
        result = run_demo(out, preset=preset, sibling=sibling, scope=scope, config=config, overwrite=overwrite,
                          log=view.message, view=view)
    _stdout().print(comparison_table(result.rows, title="held-out sets: before and after"))
    console.print(f"kept {len(result.kept)} component(s) after {result.tests} oracle tests: {', '.join(result.kept)}")
    outside = result.outside_planted
    if outside is not None:
        console.print(f"ground truth: alignment was planted in {', '.join(result.planted)}; kept outside it: "
                      f"{', '.join(outside) or 'nothing'}")
    console.print(f"report: {result.report}\npatched checkpoint: {result.patched_model}")


def _stdout() -> Console:
    """Tables on stdout: the terminal's width, or when piped the width the content needs (rich
    would cut columns to 80 characters)."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=400)


_SHOWN_WARNING = None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from ddalign.errors import DdalignWarning

    if issubclass(category, DdalignWarning) or _SHOWN_WARNING is None:
        console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    else:
        _SHOWN_WARNING(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    from ddalign.io.outputs import terminate_as_interrupt

    global _SHOWN_WARNING
    terminate_as_interrupt()                  # SIGTERM cleans up as Ctrl-C does
    # showwarning is swapped, the filters left alone: changing them would reset every module's
    # once-only warnings, so that other libraries' warnings printed again
    _SHOWN_WARNING, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        _main(argv)
    finally:
        warnings.showwarning = _SHOWN_WARNING


def _main(argv: list[str] | None) -> None:
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
