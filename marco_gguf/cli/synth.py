"""`synth`: write a random-weight checkpoint with a published Marco shape."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from marco_gguf.cli import ui
from marco_gguf.cli.options import Json, Quiet
from marco_gguf.synth.model import synthesize


class Shape(str, Enum):
    tiny = "tiny"
    nano = "nano"
    mini = "mini"


class DType(str, Enum):
    bf16 = "bf16"
    f32 = "f32"


def synth(
    shape: Annotated[Shape, typer.Argument(help="tiny (demo size), nano (8B) or mini (17.3B).")],
    out: Annotated[Path, typer.Argument(help="Folder to write the checkpoint into.")],
    layers: Annotated[int | None, typer.Option("--layers", min=1, help="Fewer layers (widths unchanged).")] = None,
    dtype: Annotated[DType, typer.Option("--dtype", help="Storage type of the weights.")] = DType.bf16,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    vocab: Annotated[str, typer.Option("--vocab", help="auto, qwen3 (real vocabulary) or small.")] = "auto",
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Write a RANDOM-WEIGHT checkpoint in exact Hugging Face layout (for benchmarks and tests)."""
    with ui.errors_to_exit(), ui.progress_bar("synthesizing", quiet=quiet or json_out) as progress:
        r = synthesize(
            out, shape=shape.value, layers=layers, dtype=dtype.value, seed=seed, vocab=vocab, progress=progress
        )
    if json_out:
        ui.print_json(
            {
                "path": str(r.path),
                "shape": r.shape,
                "n_parameters": r.n_parameters,
                "n_shards": r.n_shards,
                "size_bytes": r.size_bytes,
                "vocab": r.vocab.kind,
            }
        )
        return
    ui.print_fields(
        f"wrote {r.path} (random weights)",
        [
            ("shape", r.shape),
            ("parameters", f"{r.n_parameters:,}"),
            ("shards", str(r.n_shards)),
            ("size", ui.human_bytes(r.size_bytes)),
            ("vocabulary", r.vocab.kind),
        ],
    )
