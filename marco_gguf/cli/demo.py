"""`demo`: offline end to end on a tiny random-weight Marco."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from marco_gguf.cli import ui
from marco_gguf.cli.options import Json, Quiet, Threads
from marco_gguf.demo import demo as lib_demo


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
        Text("1. synthesized a ")
        + Text("random-weight", style="bold")
        + Text(
            f" Marco-shaped checkpoint ({r.checkpoint.n_parameters:,} parameters, {r.checkpoint.vocab.kind} "
            f"vocabulary) in {r.checkpoint.path}"
        )
    )
    ui.out.print(
        f"2. converted it to {c.path.name}: {ui.human_bytes(c.size_bytes)}, {c.bits_per_weight:.2f} bits/weight, "
        f"{c.n_tensors} tensors, {c.seconds:.2f} s"
    )
    ui.out.print("3. loaded it in llama.cpp and generated (random weights, so expect noise):")
    ui.out.print(f"   {r.text!r}", style="italic")
    ui.out.print(
        f"prompt {s.prompt_tokens} tokens at {s.prompt_tokens_per_s:,.1f} tok/s · generated "
        f"{s.completion_tokens} tokens at {s.completion_tokens_per_s:,.1f} tok/s · first token "
        f"{s.time_to_first_token_s * 1000:.0f} ms · stop: {s.stop_reason}",
        style="dim",
    )
