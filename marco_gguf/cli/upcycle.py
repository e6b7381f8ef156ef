"""`upcycle`: a dense Qwen3 checkpoint -> a Qwen3-MoE checkpoint, over `marco_gguf.hf.upcycle.upcycle`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from marco_gguf.cli import ui
from marco_gguf.hf.upcycle import upcycle as lib_upcycle


def upcycle(
    source: Annotated[Path, typer.Argument(help="A dense Qwen3 checkpoint folder (Qwen3ForCausalLM).")],
    experts: Annotated[int, typer.Option("--experts", help="Experts per layer (a multiple of --split).")],
    top_k: Annotated[int, typer.Option("--top-k", help="Experts per token (1 .. --experts).")],
    outdir: Annotated[Path, typer.Option("--outdir", "-o", help="Folder to write the MoE checkpoint into.")],
    split: Annotated[
        int, typer.Option("--split", help="Slices of the dense FFN per expert copy (1: whole copies).")
    ] = 1,
    drop: Annotated[
        float, typer.Option("--drop", help="Fraction of each expert's rows redrawn (Drop-Upcycling).")
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the router and the redrawn rows.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Turn a dense Qwen3 into a Qwen3-MoE (Marco's shape) by upcycling: split, copy, new router, drop."""
    with ui.errors_to_exit(), ui.progress_bar("upcycling", quiet=quiet or json_out) as progress:
        r = lib_upcycle(
            source,
            experts=experts,
            top_k=top_k,
            split=split,
            drop=drop,
            seed=seed,
            outdir=outdir,
            force=force,
            progress=progress,
        )
    if json_out:
        ui.print_json(r.as_dict())
        return
    ui.print_fields(
        f"wrote {escape(str(r.path))}",  # a path may hold [brackets]
        [
            ("experts", f"{r.experts} of width {r.expert_ff}, {r.top_k} per token"),
            ("split", f"{r.split} (expert weights scaled by {r.scale:.4f})"),
            ("dropped", f"{r.dropped_rows} of {r.expert_ff} rows per expert (--drop {r.drop:g}, seed {r.seed})"),
            ("parameters", f"{r.n_parameters:,}"),
            ("size", f"{ui.human_bytes(r.size_bytes)} in {r.n_shards} shard(s)"),
            ("seconds", f"{r.seconds:.1f}"),
        ],
    )
    ui.out.print("[dim]untrained router and experts: train before use, or convert it to check the shape[/dim]")
