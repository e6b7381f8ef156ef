"""`export ollama` and `export lmstudio`: hand a GGUF to the desktop tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from marco_gguf.cli import ui
from marco_gguf.cli.options import Json
from marco_gguf.export import export_lmstudio, export_ollama
from marco_gguf.export.lmstudio import DEFAULT_PUBLISHER

app = typer.Typer(
    name="export",
    no_args_is_help=True,
    add_completion=False,
    help="Hand a GGUF to Ollama (a Modelfile) or LM Studio (its models folder).",
)

File = Annotated[Path, typer.Argument(help="A GGUF file.")]
Force = Annotated[bool, typer.Option("--force", help="Replace what is already there.")]


@app.command()
def ollama(
    file: File,
    outdir: Annotated[
        Path | None, typer.Option("--outdir", help="Folder for the Modelfile (default: the GGUF's).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Ollama model name (default: the file's name).")] = None,
    force: Force = False,
    json_out: Json = False,
) -> None:
    """Write a Modelfile (Go chat template, stops, context, sampling defaults, license) and print `ollama create`."""
    with ui.errors_to_exit():
        r = export_ollama(file, outdir=outdir, name=name, force=force)
    if json_out:
        ui.print_json(r.as_dict())
        return
    ui.print_fields(
        f"wrote {r.modelfile}",
        [
            ("chat format", f"{r.template_format}{' (tools supported)' if r.tools else ''}"),
            ("parameters", ", ".join(f"{k} {v}" for k, v in r.parameters)),
            ("license", r.license or "none recorded in the GGUF"),
        ],
    )
    for note in r.notes:
        ui.note(note)
    ui.out.print("register it with:", style="bold")
    ui.out.print(r.command, soft_wrap=True)


@app.command()
def lmstudio(
    file: File,
    publisher: Annotated[
        str, typer.Option("--publisher", help="Publisher folder in LM Studio's models folder.")
    ] = DEFAULT_PUBLISHER,
    copy: Annotated[bool, typer.Option("--copy", help="Copy the file.")] = False,
    link: Annotated[bool, typer.Option("--link", help="Hard-link the file (same filesystem only).")] = False,
    symlink: Annotated[bool, typer.Option("--symlink", help="Symlink to the file.")] = False,
    force: Force = False,
    json_out: Json = False,
) -> None:
    """Place a GGUF in LM Studio's models folder (default: hard link if possible, else copy; never a move)."""
    with ui.errors_to_exit():
        r = export_lmstudio(file, publisher=publisher, copy=copy, link=link, symlink=symlink, force=force)
    if json_out:
        ui.print_json(r.as_dict())
        return
    ui.print_fields(f"{r.target}", [("method", r.method), ("models folder", str(r.models_dir))])
    ui.out.print("the same with LM Studio's CLI:", style="bold")
    ui.out.print(r.command, soft_wrap=True)
