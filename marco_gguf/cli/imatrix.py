"""`imatrix`: an importance matrix for a GGUF, over `marco_gguf.quant.imatrix.compute_imatrix`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from marco_gguf.cli import ui
from marco_gguf.cli.options import ChunkCtx, Json, Quiet, Threads
from marco_gguf.quant.imatrix import compute_imatrix


def imatrix(
    model: Annotated[Path, typer.Argument(help="A Marco (qwen3moe) GGUF, e.g. its Q8_0 or F16 file.")],
    outfile: Annotated[Path, typer.Option("--outfile", "-o", help="Output imatrix (llama.cpp's GGUF imatrix format).")],
    text: Annotated[
        Path | None,
        typer.Option("--text", "-f", help="Calibration text, UTF-8 (default: the built-in multilingual text)."),
    ] = None,
    ctx: ChunkCtx = 512,
    chunks: Annotated[int | None, typer.Option("--chunks", min=1, help="Use at most this many chunks.")] = None,
    threads: Threads = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Compute an importance matrix (llama-imatrix's sums of squared activations) for `convert --imatrix`."""
    with ui.errors_to_exit(), ui.progress_bar("imatrix", quiet=quiet or json_out) as progress:
        r = compute_imatrix(
            model, text=text, outfile=outfile, ctx=ctx, chunks=chunks, threads=threads, force=force, progress=progress
        )
    if json_out:
        ui.print_json(r.as_dict())
        return
    ui.print_fields(
        f"wrote {r.path}",
        [
            ("text", f"{r.dataset} ({r.n_tokens:,} tokens)"),
            ("chunks", f"{r.chunks} of {r.ctx} tokens"),
            ("entries", f"{r.n_entries} weight tensors"),
            ("speed", f"{r.tokens_per_s:,.0f} tokens/s"),
            ("seconds", f"{r.seconds:.1f}"),
        ],
    )
