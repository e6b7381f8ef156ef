"""`marco-gguf`: each command validates options, makes one library call and renders its result."""

from __future__ import annotations

from typing import Annotated

import typer

from marco_gguf import __version__
from marco_gguf.cli import bench as bench_cmd
from marco_gguf.cli import card as card_cmd
from marco_gguf.cli import chat as chat_cmd
from marco_gguf.cli import convert as convert_cmd
from marco_gguf.cli import demo as demo_cmd
from marco_gguf.cli import experts as experts_cmd
from marco_gguf.cli import export as export_cmd
from marco_gguf.cli import imatrix as imatrix_cmd
from marco_gguf.cli import inspect as inspect_cmd
from marco_gguf.cli import lora as lora_cmd
from marco_gguf.cli import prune as prune_cmd
from marco_gguf.cli import quality as quality_cmd
from marco_gguf.cli import serve as serve_cmd
from marco_gguf.cli import synth as synth_cmd
from marco_gguf.cli import upcycle as upcycle_cmd
from marco_gguf.cli.options import HELP_OPTION_NAMES, show_flags_without_a_type

show_flags_without_a_type()
app = typer.Typer(
    name="marco-gguf",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": HELP_OPTION_NAMES},
    help="Convert Marco-MoE checkpoints to GGUF and run them on a CPU with llama.cpp.",
)


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


app.command()(convert_cmd.convert)
app.command()(demo_cmd.demo)
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
app.command()(lora_cmd.lora)
app.command()(serve_cmd.serve)
app.command()(upcycle_cmd.upcycle)


def main() -> None:
    app()
