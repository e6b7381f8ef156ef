"""`convert`: a checkpoint (or a hub id) to one GGUF, optionally with an imatrix made on the way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from marco_gguf.calibrate import calibrate_convert
from marco_gguf.cli import ui
from marco_gguf.cli.options import Json, Quiet, Threads
from marco_gguf.convert import convert as lib_convert
from marco_gguf.quant.presets import builtin_presets


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
