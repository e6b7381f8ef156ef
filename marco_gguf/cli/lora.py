"""`lora`: a PEFT LoRA adapter folder -> a GGUF adapter, over `marco_gguf.gguf_io.lora_gguf.write_lora_gguf`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from marco_gguf.cli import ui
from marco_gguf.cli.options import Json, Quiet
from marco_gguf.gguf_io.lora_gguf import OUTTYPES, write_lora_gguf

# chat's and serve's adapter options, as llama-server spells them
LoraOption = Annotated[
    list[Path] | None,
    typer.Option("--lora", metavar="FILE", help="A GGUF LoRA adapter to apply at scale 1 (repeatable)."),
]
LoraScaledOption = Annotated[
    list[str] | None,
    typer.Option("--lora-scaled", metavar="FILE:SCALE", help="A GGUF LoRA adapter and its scale (repeatable)."),
]


def lora(
    adapter: Annotated[Path, typer.Argument(help="A PEFT LoRA adapter folder (adapter_config.json + safetensors).")],
    base: Annotated[Path, typer.Option("--base", help="The base checkpoint folder the adapter was trained on.")],
    outfile: Annotated[
        Path | None,
        typer.Option("--outfile", "-o", help="Output file (default: <Name>-<TYPE>-LoRA.gguf in the adapter folder)."),
    ] = None,
    outtype: Annotated[str, typer.Option("--outtype", help=f"Tensor type: {', '.join(OUTTYPES)}.")] = "f32",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Write a LoRA adapter as a GGUF adapter for llama.cpp (chat/serve --lora, llama-server, Ollama's ADAPTER)."""
    with ui.errors_to_exit(), ui.progress_bar("writing", quiet=quiet or json_out) as progress:
        r = write_lora_gguf(adapter, base=base, outfile=outfile, outtype=outtype, force=force, progress=progress)
    if json_out:
        ui.print_json(r.as_dict())
        return
    ui.print_fields(
        f"wrote {r.path}",
        [
            ("type", r.outtype),
            ("size", f"{ui.human_bytes(r.size_bytes)} ({r.size_bytes:,} bytes)"),
            ("tensors", f"{r.n_tensors} ({', '.join(r.kinds)})"),
            (
                "alpha",
                f"{r.alpha:g}" + (" (rsLoRA/alpha_pattern scales folded into lora_b)" if r.folded_scales else ""),
            ),
            ("seconds", f"{r.seconds:.1f}"),
        ],
    )
