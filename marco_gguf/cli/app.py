"""`marco-gguf`: each command validates options, makes one library call and renders its result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from marco_gguf import __version__
from marco_gguf import convert as lib_convert
from marco_gguf import demo as lib_demo
from marco_gguf.calibrate import calibrate_convert
from marco_gguf.cli import bench as bench_cmd
from marco_gguf.cli import card as card_cmd
from marco_gguf.cli import chat as chat_cmd
from marco_gguf.cli import experts as experts_cmd
from marco_gguf.cli import export as export_cmd
from marco_gguf.cli import imatrix as imatrix_cmd
from marco_gguf.cli import inspect as inspect_cmd
from marco_gguf.cli import prune as prune_cmd
from marco_gguf.cli import quality as quality_cmd
from marco_gguf.cli import serve as serve_cmd
from marco_gguf.cli import synth as synth_cmd
from marco_gguf.cli import ui
from marco_gguf.cli import upcycle as upcycle_cmd
from marco_gguf.quant.presets import builtin_presets

app = typer.Typer(
    name="marco-gguf",
    no_args_is_help=True,
    add_completion=False,
    help="Convert Marco-MoE checkpoints to GGUF and run them on a CPU with llama.cpp.",
)

Threads = Annotated[int | None, typer.Option("--threads", "-t", min=1, help="Worker threads (default: all cores).")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"marco-gguf {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Convert Marco-MoE checkpoints to GGUF and run them on a CPU with llama.cpp."""


@app.command()
def convert(
    source: Annotated[str, typer.Argument(help="Hugging Face checkpoint folder, or a hub id owner/name (downloaded).")],
    preset: Annotated[
        str, typer.Option("--preset", help=f"Preset id ({', '.join(builtin_presets())}) or a .toml file.")
    ] = "q8_0",
    outfile: Annotated[Path | None, typer.Option("--outfile", "-o", help="Output file.")] = None,
    outdir: Annotated[
        Path | None,
        typer.Option("--outdir", help="Output folder (created if missing); file named <model>-<PRESET>.gguf."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name (default: the folder's name).")] = None,
    threads: Threads = None,
    tensor_type: Annotated[
        list[str] | None, typer.Option("--tensor-type", help="Override: PATTERN=TYPE (repeatable).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Hub branch, tag or commit (hub ids only).")
    ] = None,
    imatrix: Annotated[
        Path | None,
        typer.Option(
            "--imatrix",
            help="Importance matrix (GGUF or legacy .dat) "
            "to quantize with, from `marco-gguf imatrix` or llama-imatrix.",
        ),
    ] = None,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate",
            help="Make the imatrix here: a temporary Q8_0, its imatrix over TEXT (default: the built-in "
            "text), then the quant.",
        ),
    ] = False,
    calibration_text: Annotated[
        Path | None,
        typer.Argument(metavar="TEXT", show_default=False, help="With --calibrate: the calibration text (UTF-8)."),
    ] = None,
    calibration_model: Annotated[
        Path | None,
        typer.Option(
            "--calibration-model",
            help="With --calibrate: compute the imatrix on this GGUF instead of a temporary Q8_0.",
        ),
    ] = None,
    keep_imatrix: Annotated[
        Path | None, typer.Option("--keep-imatrix", help="With --calibrate: keep the imatrix here.")
    ] = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Convert a Marco checkpoint into one GGUF file."""
    if not calibrate and (calibration_model or keep_imatrix or calibration_text):
        raise typer.BadParameter("TEXT, --calibration-model and --keep-imatrix go with --calibrate")
    if calibrate and imatrix is not None:
        raise typer.BadParameter("give --imatrix FILE or --calibrate, not both")
    calibrated = None
    options: dict[str, Any] = dict(
        preset=preset,
        outfile=outfile,
        outdir=outdir,
        name=name,
        threads=threads,
        force=force,
        tensor_types=tensor_type or (),
        revision=revision,
    )
    with ui.errors_to_exit(), ui.progress_bar("converting", quiet=quiet or json_out) as progress:
        if calibrate:
            calibrated = calibrate_convert(
                source,
                text=calibration_text,
                calibration_model=calibration_model,
                keep_imatrix=keep_imatrix,
                progress=progress,
                **options,
            )
            result = calibrated.conversion
        else:
            result = lib_convert(source, imatrix=imatrix, progress=progress, **options)
    if json_out:
        ui.print_json(calibrated.as_dict() if calibrated else result.as_dict())
        return
    ui.print_fields(
        f"wrote {result.path}",
        [
            ("preset", f"{result.preset} ({result.file_type})"),
            ("size", f"{ui.human_bytes(result.size_bytes)} ({result.size_bytes:,} bytes)"),
            ("bits/weight", f"{result.bits_per_weight:.2f}"),
            (
                "tensors",
                f"{result.n_tensors} ({', '.join(f'{n} {k}' for k, n in sorted(result.tensor_types.items()))})",
            ),
            ("parameters", f"{result.n_parameters:,}"),
            (
                "embeddings",
                "tied (token_embd serves as output)" if result.tied_embeddings else "separate output.weight",
            ),
            ("seconds", f"{result.seconds:.1f}"),
        ]
        + ([("source", f"{result.hub_repo} @ {result.hub_commit}")] if result.hub_repo else [])
        + ([("imatrix", result.imatrix)] if result.imatrix else [])
        + (
            [
                (
                    "calibration",
                    f"{calibrated.imatrix.chunks} chunks of {calibrated.imatrix.dataset} on "
                    f"{calibrated.calibration_model}, {calibrated.seconds:.1f} s in all",
                )
            ]
            if calibrated
            else []
        ),
    )


@app.command()
def demo(
    workdir: Annotated[
        Path | None, typer.Option("--workdir", help="Keep the files here (default: a temp dir).")
    ] = None,
    preset: Annotated[str, typer.Option("--preset", help="Preset for the conversion.")] = "q8_0",
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", min=1)] = 24,
    threads: Threads = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Offline end to end: synthesize a tiny RANDOM-WEIGHT Marco, convert it, run it in llama.cpp."""
    with ui.errors_to_exit(), ui.progress_bar("demo", quiet=quiet or json_out) as progress:
        r = lib_demo(workdir=workdir, preset=preset, max_tokens=max_tokens, threads=threads, progress=progress)
    s, c = r.stats, r.conversion
    if json_out:
        ui.print_json({"checkpoint": str(r.checkpoint.path), "gguf": c.as_dict(), "text": r.text, **s.__dict__})
        return
    ui.out.print(
        f"1. synthesized a [bold]random-weight[/bold] Marco-shaped checkpoint ({r.checkpoint.n_parameters:,} "
        f"parameters, {r.checkpoint.vocab.kind} vocabulary) in {r.checkpoint.path}"
    )
    ui.out.print(
        f"2. converted it to {c.path.name}: {ui.human_bytes(c.size_bytes)}, {c.bits_per_weight:.2f} bits/weight, "
        f"{c.n_tensors} tensors, {c.seconds:.2f} s"
    )
    ui.out.print("3. loaded it in llama.cpp and generated (random weights, so expect noise):")
    ui.out.print(f"   [italic]{r.text!r}[/italic]")
    ui.out.print(
        f"[dim]prompt {s.prompt_tokens} tokens at {s.prompt_tokens_per_s:,.1f} tok/s · generated "
        f"{s.completion_tokens} tokens at {s.completion_tokens_per_s:,.1f} tok/s · first token "
        f"{s.time_to_first_token_s * 1000:.0f} ms · stop: {s.stop_reason}[/dim]"
    )


app.command()(inspect_cmd.inspect)
app.command()(inspect_cmd.verify)
app.add_typer(export_cmd.app, name="export")
app.command()(card_cmd.card)
app.command()(synth_cmd.synth)
app.command()(chat_cmd.chat)
app.command()(bench_cmd.bench)
app.command()(quality_cmd.quality)
app.command()(imatrix_cmd.imatrix)
app.command()(experts_cmd.experts)
app.command()(prune_cmd.prune)
app.command()(serve_cmd.serve)
app.command()(upcycle_cmd.upcycle)


def main() -> None:
    app()
