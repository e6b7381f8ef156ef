"""`prune`: keep the N best experts of every layer, over `marco_gguf.experts.prune.prune`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from marco_gguf.cli import ui
from marco_gguf.cli.options import Json, Quiet, Threads
from marco_gguf.experts.prune import prune as lib_prune


def prune(
    source: Annotated[Path, typer.Argument(help="A Marco GGUF (sliced, not requantized) or a checkpoint folder.")],
    keep: Annotated[
        int, typer.Option("--keep", help="Experts to keep in every layer (experts per token .. expert count).")
    ],
    usage: Annotated[Path, typer.Option("--usage", help="What `marco-gguf experts --usage` measured on this model.")],
    method: Annotated[
        str, typer.Option("--method", help="reap (gate weight x output norm) or frequency (tokens routed).")
    ] = "reap",
    preset: Annotated[
        str | None, typer.Option("--preset", help="Preset for a checkpoint SOURCE (default q8_0).")
    ] = None,
    imatrix: Annotated[
        Path | None,
        typer.Option(
            "--imatrix",
            help="Importance matrix of the whole model: sliced "
            "alike (quantizes a checkpoint; written beside a pruned GGUF).",
        ),
    ] = None,
    outfile: Annotated[
        Path | None, typer.Option("--outfile", "-o", help="Output file (or folder with --format hf).")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="gguf, or hf: a pruned Hugging Face checkpoint (checkpoint SOURCE).")
    ] = "gguf",
    threads: Threads = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")] = False,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """A smaller Marco: the N best experts of every layer by REAP score or routing frequency."""
    with ui.errors_to_exit(), ui.progress_bar("pruning", quiet=quiet or json_out) as progress:
        r = lib_prune(
            source,
            keep=keep,
            usage=usage,
            method=method,
            preset=preset,
            imatrix=imatrix,
            outfile=outfile,
            format=fmt,
            threads=threads,
            force=force,
            progress=progress,
        )
    if json_out:
        ui.print_json(r.as_dict())
        return
    ui.print_fields(
        f"wrote {r.path}",
        [
            ("experts", f"{r.experts_after} of {r.experts_before} per layer, by {r.method}"),
            ("size", f"{ui.human_bytes(r.size_bytes)} ({r.size_bytes:,} bytes)"),
            ("seconds", f"{r.seconds:.1f}"),
        ]
        + ([("imatrix", str(r.imatrix))] if r.imatrix else []),
    )
    ui.out.print("measure what pruning cost before trusting it (EVAL.txt: a text the usage was not measured on):")
    ui.out.print(r.next_step, style="dim", soft_wrap=True)  # commands to copy: never wrapped
