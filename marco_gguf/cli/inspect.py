"""`inspect` and `verify`: reading a GGUF back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from marco_gguf.arch.qwen3moe import DEFAULT_CTX
from marco_gguf.cli import ui
from marco_gguf.cli.options import Ctx, Json, Quiet
from marco_gguf.experts.prune import PREFIX as PRUNE_PREFIX
from marco_gguf.gguf_io.info import GROUPS, GGUFInfo, read_info
from marco_gguf.measure.verify import VerifyResult
from marco_gguf.measure.verify import verify as lib_verify
from marco_gguf.quant.plan_file import describe_plan


def inspect(
    file: Annotated[Path, typer.Argument(help="A GGUF file.")],
    ctx: Ctx = DEFAULT_CTX,
    json_out: Json = False,
) -> None:
    """Architecture, file type, tokenizer, tensors by group, bits/weight, active bytes per token, RAM needed."""
    with ui.errors_to_exit():
        info = read_info(file)
    if json_out:
        ui.print_json(info.as_dict(ctx))
        return
    ui.print_fields(info.path.name, _summary(info))
    if info.plan:  # a file planned for a size or bits/weight budget: how, from its quantize.plan.* keys
        ui.print_fields("Plan", describe_plan(info.plan))
    groups = Table(title="tensor groups", title_justify="left")
    for col in ("group", "tensors", "parameters", "size", "bits/weight", "types"):
        groups.add_column(col, justify="left" if col in ("group", "types") else "right")
    for g, v in info.group_totals().items():
        groups.add_row(
            g,
            str(v["tensors"]),
            f"{v['parameters']:,}",
            ui.human_bytes(v["bytes"]),
            f"{v['bits_per_weight']:.2f}",
            ", ".join(f"{q} x{n}" for q, n in v["types"].items()),
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
        Text(f"RAM to load with --ctx {ctx:,}: ")
        + Text(ui.human_bytes(ram["total"]), style="bold")
        + Text(
            f" (weights {ui.human_bytes(ram['weights'])} + KV cache {ui.human_bytes(ram['kv_cache'])} F16 + "
            f"llama.cpp's compute buffers {ui.human_bytes(ram['compute'])})"
        ),
        soft_wrap=True,
    )
    if note := info.context_note(ctx):
        ui.note(note)


PRUNED_FROM = f"{PRUNE_PREFIX}source_expert_count"


def _summary(info: GGUFInfo) -> list[tuple[str, str | Text]]:
    h, tok = info.hparams, info.tokenizer
    return [
        ("architecture", f"{info.architecture} ({info.name or 'unnamed'})"),
        ("file type", f"{info.file_type_name or 'not recorded'} (general.file_type {info.file_type})"),
        ("layers / hidden", f"{h.get('block_count')} / {h.get('embedding_length')}"),
        (
            "heads (q/kv) x dim",
            f"{h.get('attention.head_count')}/{h.get('attention.head_count_kv')} x {h.get('attention.key_length')}",
        ),
        ("experts", _experts(info)),
        ("context / rope base", f"{h.get('context_length')} / {h.get('rope.freq_base')}"),
        (
            "tokenizer",
            f"{tok['model']}/{tok['pre']}, {tok['tokens']:,} tokens, {tok['merges']:,} merges, "
            f"bos {tok['bos_token_id']} eos {tok['eos_token_id']}, add_bos {tok['add_bos_token']}",
        ),
        ("chat template", "embedded" if info.has_chat_template else Text("missing", style="red")),
        (
            "size",
            f"{ui.human_bytes(info.file_size)}, {info.n_parameters:,} parameters, "
            f"{info.bits_per_weight:.2f} bits/weight",
        ),
        ("per token", f"{info.active_parameters:,} active parameters, {ui.human_bytes(info.bytes_per_token)} read"),
        *((key, _value(v)) for key, v in info.marco.items()),  # a pruned file's marco.prune.* record
    ]


def _experts(info: GGUFInfo) -> str:
    """`8 of 232 used per token, each 384 wide`; a pruned file adds what it was pruned from."""
    h, source = info.hparams, info.marco.get(PRUNED_FROM)
    pruned = f" (pruned from {source}; marco.prune.* below)" if source is not None else ""
    return (
        f"{h.get('expert_used_count')} of {h.get('expert_count')} used per token{pruned}, "
        f"each {h.get('expert_feed_forward_length')} wide"
    )


def _value(v: Any) -> str:
    """A metadata value on one line: a long list as its length and first items."""
    if isinstance(v, list) and len(v) > 8:
        return f"{len(v):,} values: {', '.join(map(str, v[:8]))}, ..."
    return ", ".join(map(str, v)) if isinstance(v, list) else str(v)


def verify(
    file: Annotated[Path, typer.Argument(help="A GGUF file.")],
    source: Annotated[str, typer.Option("--source", help="The checkpoint folder it was converted from.")],
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Check a GGUF against its source: every tensor, its error for its type, metadata, and loading."""
    with ui.errors_to_exit(), ui.progress_bar("verifying", quiet=quiet or json_out) as progress:
        result = lib_verify(file, source=source, progress=progress)
    if json_out:
        ui.print_json(result.as_dict())
    else:
        _show_verify(result)
    if not result.ok:
        raise typer.Exit(1)


def _show_verify(result: VerifyResult) -> None:
    worst: dict[str, float] = {}
    for t in result.tensors:
        worst[t.type] = max(worst.get(t.type, 0.0), t.rel_rms_error)
    problems = [
        *(f"missing tensor {n}" for n in result.missing),
        *(f"unexpected tensor {n}" for n in result.unexpected),
        *result.shape_mismatches,
        *result.metadata_mismatches,
        *(f"{t.name} ({t.type}): error {t.rel_rms_error:.2e} > bound {t.bound:.1e}" for t in result.flagged),
        *([f"llama.cpp could not load it: {result.load_error}"] if result.load_error else []),
    ]
    bad = len(result.metadata_mismatches)
    metadata = (
        Text(f"{bad} of {result.metadata_checked} keys differ from the source", style="red")
        if bad
        else f"{result.metadata_checked} keys match the source"
    )
    loading = "not tried" if not result.load_tried else "loads it" if not result.load_error else None
    ui.print_fields(
        f"{'verified' if result.ok else 'verification failed:'} {result.path.name} against {result.source}",
        [(f"worst {k}", f"{v:.2e} relative RMS error") for k, v in sorted(worst.items())]
        + [
            ("tensors", f"{len(result.tensors)} checked, {len(result.flagged)} over their bound"),
            ("metadata", metadata),
            ("llama.cpp", loading or Text("could not load it", style="red")),
            ("seconds", f"{result.seconds:.1f}"),
            ("result", Text("OK", style="green") if result.ok else Text(f"{len(problems)} problem(s)", style="red")),
        ],
    )
    for p in problems:
        ui.out.print(Text("✗ ", style="red") + Text(p), soft_wrap=True)
