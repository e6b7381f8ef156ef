"""`bench`: llama-bench style pp/tg speeds with the memory roofline, over `marco_gguf.measure.bench.bench`."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from marco_gguf.cli import ui
from marco_gguf.cli.options import Json
from marco_gguf.measure.bench import bench as lib_bench

D = {name: p.default for name, p in inspect.signature(lib_bench).parameters.items()}


def _thread_counts(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of numbers, like 1,2") from None
    if not counts or min(counts) < 1:
        raise typer.BadParameter("thread counts must be 1 or more")
    return counts


def bench(
    model: Annotated[Path, typer.Argument(help="A Marco (qwen3moe) GGUF file.")],
    n_prompt: Annotated[
        int, typer.Option("-p", "--n-prompt", min=0, help="Prompt length of the pp test (0: skip; llama-bench's -p).")
    ] = D["n_prompt"],
    n_gen: Annotated[int, typer.Option("-n", "--n-gen", min=0, help="Generated tokens of the tg test (0: skip).")] = D[
        "n_gen"
    ],
    threads: Annotated[str, typer.Option("--threads", "-t", help="Thread counts to test, comma-separated.")] = ",".join(
        map(str, D["threads"])
    ),
    reps: Annotated[int, typer.Option("--reps", "-r", min=1, help="Repetitions after one warm-up.")] = D["reps"],
    json_out: Json = False,
) -> None:
    """Prompt and generation speed (like llama-bench), memory bandwidth, and speed as a share of the roofline."""
    counts = _thread_counts(threads)
    if n_prompt + n_gen == 0:
        raise typer.BadParameter("-p and -n cannot both be 0")
    with ui.errors_to_exit(), ui.progress_bar("benchmarking", quiet=json_out) as progress:
        result = lib_bench(model, n_prompt=n_prompt, n_gen=n_gen, threads=counts, reps=reps, progress=progress)
    if json_out:
        ui.print_json([r.as_dict() for r in result.rows])
        return
    table = Table(
        title=f"{result.path.name} (median ± standard deviation of {reps} runs after a warm-up)", title_justify="left"
    )
    for col in ("model", "size", "bits/weight", "threads", "test", "t/s", "roofline t/s", "of roofline"):
        table.add_column(col, justify="left" if col in ("model", "test") else "right")
    for r in result.rows:
        table.add_row(
            r.model,
            ui.human_bytes(r.size_bytes),
            f"{r.bits_per_weight:.2f}",
            str(r.threads),
            r.test,
            f"{r.tokens_per_s:,.2f} ± {r.spread:,.2f}",  # llama-bench's format: one precision for both
            f"{r.roofline_tokens_per_s:,.1f}" if r.roofline_tokens_per_s else "",
            f"{r.roofline_fraction:.0%}" if r.roofline_fraction is not None else "",
        )
    # a pipe or a file gets the whole table rather than Rich's 80 columns
    (ui.out if ui.out.is_terminal else Console(highlight=False, markup=False, width=160)).print(table)
    ui.out.print(
        "memory bandwidth (STREAM-like copy/add over 3 x 256 MiB arrays, before and after the tests):", soft_wrap=True
    )
    for t in result.bandwidth_runs:
        b = result.bandwidth_spread(t)
        ui.out.print(
            f"  {t} thread(s): best {b['best']:,.1f} GB/s of {b['runs']} runs (median {b['median']:,.1f}, lowest "
            f'{b["lowest"]:,.1f}); the roofline uses the best: at the median, "of roofline" would be '
            f"{b['uncertainty']:.0%} higher",
            soft_wrap=True,
        )
    ui.out.print(
        f"bytes read per generated token: {ui.human_bytes(result.bytes_per_token)} (routed experts' share, "
        "attention, router, norms, output matrix, one embedding row); roofline = bandwidth / that",
        soft_wrap=True,
    )
