"""`convert`: a checkpoint (or a hub id) to one GGUF, optionally with an imatrix made on the way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from marco_gguf.calibrate import calibrate_convert
from marco_gguf.cli import ui
from marco_gguf.cli.options import Json, Quiet, Threads
from marco_gguf.convert import convert as lib_convert
from marco_gguf.quant.presets import builtin_presets


def convert(
    source: Annotated[str, typer.Argument(help="Hugging Face checkpoint folder, or a hub id owner/name (downloaded).")],
    preset: Annotated[
        str | None,
        typer.Option("--preset", help=f"Preset id ({', '.join(builtin_presets())}) or a .toml file [default: q8_0]."),
    ] = None,
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
            "text), then the quant. With a target, the plan is weighed by sensitivity measured on that Q8_0 too.",
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
    lora: Annotated[
        Path | None,
        typer.Option("--lora", help="A PEFT LoRA adapter folder to merge into the base while converting."),
    ] = None,
    target_size: Annotated[
        str | None,
        typer.Option(
            "--target-size",
            help="Plan each tensor's type for a file of at most this size (8GB = 8x10^9 bytes, 7.5GiB, bytes).",
        ),
    ] = None,
    target_bpw: Annotated[
        float | None, typer.Option("--target-bpw", help="Plan each tensor's type for at most these bits/weight.")
    ] = None,
    max_bytes_per_token: Annotated[
        int | None,
        typer.Option("--max-bytes-per-token", help="With a target: cap the weight bytes one generated token reads."),
    ] = None,
    types: Annotated[
        str | None,
        typer.Option("--types", help="With a target: the candidate types, comma-separated (default: all CPU types)."),
    ] = None,
    plan_out: Annotated[
        Path | None, typer.Option("--plan-out", help="With a target: write the plan here (a preset .toml file).")
    ] = None,
    sensitivity: Annotated[
        Path | None,
        typer.Option(
            "--sensitivity",
            help="With a target: weigh each tensor's error by the KLD it costs on this GGUF of the model "
            "(e.g. its Q8_0; one llama.cpp pass per tensor, and a few per budget to correct the plan by group; "
            "cached). --calibrate uses its own Q8_0 unless given.",
        ),
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
        lora=lora,
        target_size=target_size,
        target_bpw=target_bpw,
        max_bytes_per_token=max_bytes_per_token,
        types=_type_names(types),
        plan_out=plan_out,
        sensitivity=sensitivity,
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
            # a plan is no preset: its file type is only the type that holds most of its bytes
            ("plan", f"{result.plan['plan']['preset']} (file type {result.file_type}, the type of most bytes)")
            if result.plan
            else ("preset", f"{result.preset} ({result.file_type})"),
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
        + ([("lora", f"{result.lora} (merged)")] if result.lora else [])
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
    if result.plan:
        print_plan(result.plan, plan_out)


def _type_names(types: str | None) -> list[str]:
    """--types q4_k,q6_k -> ["q4_k", "q6_k"]; a value that names nothing ("" or ",") goes on whole, for convert
    to refuse (it must not mean every type)."""
    if types is None:
        return []
    return [t.strip() for t in types.split(",") if t.strip()] or [types]


def _error(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def print_plan(plan: dict, plan_out: Path | None) -> None:
    """The plan's size, bits/weight, bytes per token and estimated error, and the same for the fixed presets
    just smaller and just larger (their error estimated from the same measurements)."""
    table = Table(title=f"plan for {plan['target']}: {plan['objective']}", title_justify="left")
    for col in ("", "size", "bits/weight", "bytes/token", "estimated error"):
        table.add_column(col, justify="left" if not col else "right")
    rows = sorted([plan["plan"], *plan["neighbours"]], key=lambda p: p["size_bytes"])
    for p in rows:
        label = Text(f"{p['preset']} (plan)", style="bold") if p is plan["plan"] else Text(p["preset"])
        table.add_row(
            label,
            f"{ui.human_bytes(p['size_bytes'])} ({p['size_bytes']:,} B)",
            f"{p['bits_per_weight']:.3f}",
            ui.human_bytes(p["bytes_per_token"]),
            _error(p["estimated_error"]),
        )
    ui.out.print(table)
    measured = f"{plan['measured']} measured, {plan['cached']} from the cache {plan['cache']}"
    ui.out.print(f"errors per (tensor, type): {measured}; planning took {plan['seconds']:.1f} s", style="dim")
    if plan.get("gains_cache") is not None:
        how = f"{plan['gains_measured']} measured now" if plan["gains_measured"] else "all from the cache"
        ui.out.print(f"sensitivity per tensor: {how}, kept in {plan['gains_cache']}", style="dim", soft_wrap=True)
    if plan.get("groups"):
        ratios = ", ".join(f"{g['name']} {g['ratio']:.3g}" for g in plan["groups"])
        again = "planned again" if plan["replanned"] else "the same plan again"
        ui.out.print(f"groups noised at once, measured / estimated: {ratios}; {again}", style="dim", soft_wrap=True)
    if plan_out is not None:
        ui.out.print(f"plan written to {plan_out} (use it with --preset)", soft_wrap=True)
