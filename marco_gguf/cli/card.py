"""`card`: a README.md for a folder of GGUFs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from marco_gguf.cli import ui
from marco_gguf.cli.options import Json
from marco_gguf.export import write_card


def card(
    folder: Annotated[Path, typer.Argument(help="A folder of .gguf files.")],
    force: Annotated[bool, typer.Option("--force", help="Replace a README.md marco-gguf did not write.")] = False,
    quality: Annotated[
        list[Path] | None,
        typer.Option("--quality", help="A `marco-gguf quality --json` result for files of FOLDER (repeatable)."),
    ] = None,
    json_out: Json = False,
) -> None:
    """Write FOLDER/README.md: source, license, a table of the files, measured quality, prompt format, how to run each."""
    with ui.errors_to_exit():
        r = write_card(folder, force=force, quality=quality or ())
    if json_out:
        ui.print_json(r.as_dict())
        return
    ui.out.print(f"wrote {r.path}", soft_wrap=True)
    table = Table()
    # file names stay whole (copyable): the other columns give way
    table.add_column("file", no_wrap=True, min_width=max(len(row.filename) for row in r.rows))
    table.add_column("quant type")
    for col in ("size", "bits/weight", "experts"):
        table.add_column(col, justify="right", no_wrap=col != "bits/weight")
    for row in r.rows:
        experts = f"{row.experts} of {row.pruned_from}" if row.pruned_from else str(row.experts)  # pruned: "8 of 16"
        table.add_row(
            row.filename, row.quant_type, ui.human_bytes(row.size_bytes), f"{row.bits_per_weight:.2f}", experts
        )
    ui.out.print(table)
