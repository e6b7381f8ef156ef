"""`inspect` and `verify`: reading a GGUF back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from marco_gguf.arch.qwen3moe import DEFAULT_CTX
from marco_gguf.cli import ui
from marco_gguf.gguf_io.info import GROUPS, read_info
from marco_gguf.measure.verify import verify as lib_verify

Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def inspect(
    file: Annotated[Path, typer.Argument(help="A GGUF file.")],
    ctx: Annotated[int, typer.Option("--ctx", min=1, help="Context length for the RAM estimate.")] = DEFAULT_CTX,
    json_out: Json = False,
) -> None:
    """Architecture, tokenizer, tensors by group, bits/weight, active bytes per token, RAM needed."""
    with ui.errors_to_exit():
        info = read_info(file)
    if json_out:
        ui.print_json(info.as_dict(ctx))
        return
    h, tok = info.hparams, info.tokenizer
    ui.print_fields(
        f"{info.path.name}",
        [
            ("architecture", f"{info.architecture} ({info.name or 'unnamed'})"),
            ("layers / hidden", f"{h.get('block_count')} / {h.get('embedding_length')}"),
            (
                "heads (q/kv) x dim",
                f"{h.get('attention.head_count')}/{h.get('attention.head_count_kv')} x {h.get('attention.key_length')}",
            ),
            (
                "experts",
                f"{h.get('expert_count')} of {h.get('expert_feed_forward_length')}, {h.get('expert_used_count')} used",
            ),
            ("context / rope base", f"{h.get('context_length')} / {h.get('rope.freq_base')}"),
            (
                "tokenizer",
                f"{tok['model']}/{tok['pre']}, {tok['tokens']:,} tokens, {tok['merges']:,} merges, "
                f"bos {tok['bos_token_id']} eos {tok['eos_token_id']}, add_bos {tok['add_bos_token']}",
            ),
            ("chat template", "embedded" if info.has_chat_template else "[red]missing[/red]"),
            (
                "size",
                f"{ui.human_bytes(info.file_size)}, {info.n_parameters:,} parameters, "
                f"{info.bits_per_weight:.2f} bits/weight",
            ),
            ("per token", f"{info.active_parameters:,} active parameters, {ui.human_bytes(info.bytes_per_token)} read"),
        ],
    )
    groups = Table(title="tensor groups", title_justify="left")
    for col in ("group", "tensors", "parameters", "bytes", "bits/weight"):
        groups.add_column(col, justify="left" if col == "group" else "right")
    for g, v in info.group_totals().items():
        groups.add_row(
            g, str(v["tensors"]), f"{v['parameters']:,}", ui.human_bytes(v["bytes"]), f"{v['bits_per_weight']:.2f}"
        )
    ui.out.print(groups)
    tensors = Table(title="tensors", title_justify="left")
    for col in ("group", "name", "shape (ggml ne)", "type", "bytes"):
        tensors.add_column(col)
    for g in GROUPS:
        for t in (t for t in info.tensors if t.group == g):
            tensors.add_row(g, t.name, str(list(reversed(t.shape))), t.type, f"{t.n_bytes:,}")
    ui.out.print(tensors)
    ram = info.ram_needed(ctx)
    ui.out.print(
        f"RAM to load with --ctx {ctx}: [bold]{ui.human_bytes(ram['total'])}[/bold] "
        f"(weights {ui.human_bytes(ram['weights'])} + KV cache {ui.human_bytes(ram['kv_cache'])} F16 + "
        f"compute ~{ui.human_bytes(ram['compute'])})"
    )


def verify(
    file: Annotated[Path, typer.Argument(help="A GGUF file.")],
    source: Annotated[str, typer.Option("--source", help="The checkpoint folder it was converted from.")],
    json_out: Json = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Check a GGUF against its source: every tensor, its error for its type, metadata, and loading."""
    with ui.errors_to_exit(), ui.progress_bar("verifying", quiet=quiet or json_out) as progress:
        result = lib_verify(file, source=source, progress=progress)
    if json_out:
        ui.print_json(result.as_dict())
    else:
        worst: dict[str, float] = {}
        for t in result.tensors:
            worst[t.type] = max(worst.get(t.type, 0.0), t.rel_rms_error)
        rows = [(f"worst {k}", f"{v:.2e} relative RMS error") for k, v in sorted(worst.items())]
        problems = [
            *(f"missing tensor {n}" for n in result.missing),
            *(f"unexpected tensor {n}" for n in result.unexpected),
            *result.shape_mismatches,
            *result.metadata_mismatches,
            *(f"{t.name} ({t.type}): error {t.rel_rms_error:.2e} > bound {t.bound:.1e}" for t in result.flagged),
            *([f"llama.cpp could not load it: {result.load_error}"] if result.load_error else []),
        ]
        ui.print_fields(
            f"verified {result.path.name} against {result.source}",
            rows
            + [
                ("tensors", f"{len(result.tensors)} checked"),
                ("seconds", f"{result.seconds:.1f}"),
                ("result", "[green]OK[/green]" if result.ok else f"[red]{len(problems)} problem(s)[/red]"),
            ],
        )
        for p in problems:
            ui.out.print(f"[red]✗[/red] {p}")
    if not result.ok:
        raise typer.Exit(1)
