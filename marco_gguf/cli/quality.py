"""`quality`: perplexity and KL divergence against a reference GGUF, over `marco_gguf.measure.quality.quality`."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from marco_gguf.cli import ui
from marco_gguf.cli.options import ChunkCtx, Json, Threads
from marco_gguf.measure.quality import FileQuality
from marco_gguf.measure.quality import quality as lib_quality

D = {name: p.default for name, p in inspect.signature(lib_quality).parameters.items()}


def _pm(e, scale: float = 1.0, digits: int = 4, unit: str = "") -> str:
    return f"{e.value * scale:.{digits}f} ± {e.stderr * scale:.{digits}f}{unit}"


def _rows(r: FileQuality) -> list[tuple[str, str]]:
    k = r.kld_distribution
    return [
        ("size", f"{ui.human_bytes(r.size_bytes)}, {r.bits_per_weight:.2f} bits/weight"),
        ("PPL", _pm(r.ppl)),
        ("ln(PPL/PPL(ref))", f"{_pm(r.ln_ppl_ratio, digits=5)}   correlation {100 * r.ppl_correlation:.2f} %"),
        ("mean KLD", _pm(r.kld, digits=6)),
        ("KLD median / 99 % / 99.9 % / max", f"{k['median']:.6f} / {k['99']:.6f} / {k['99.9']:.6f} / {k['max']:.6f}"),
        ("same top p", _pm(r.same_top_p, 100, 3, " %")),
        ("RMS Δp", _pm(r.rms_dp, 100, 3, " %")),
        ("seconds", f"{r.seconds:.1f}"),
    ]


def quality(
    files: Annotated[list[Path], typer.Argument(help="GGUF file(s) to measure.")],
    ref: Annotated[Path, typer.Option("--ref", help="Reference GGUF of the same model (e.g. F16, BF16 or Q8_0).")],
    text: Annotated[Path, typer.Option("--text", "-f", help="UTF-8 evaluation text (at least 2 chunks of -c tokens).")],
    n_ctx: ChunkCtx = D["n_ctx"],
    chunks: Annotated[
        int | None, typer.Option("--chunks", min=1, help="Score at most N chunks (default: all).")
    ] = None,
    threads: Threads = None,
    json_out: Json = False,
) -> None:
    """Perplexity and KL divergence from REF of each FILE, as llama-perplexity --kl-divergence measures them
    (the second half of each chunk is scored); `card --quality` reads its --json."""
    with ui.errors_to_exit(), ui.progress_bar("scoring", quiet=json_out) as progress:
        report = lib_quality(files, ref=ref, text=text, n_ctx=n_ctx, chunks=chunks, threads=threads, progress=progress)
    if json_out:
        ui.print_json(report.as_dict())
        return
    ui.out.print(
        f"{report.text}: {report.text_tokens:,} tokens, {report.chunks} chunks of {report.n_ctx}, "
        f"{report.scored_tokens:,} scored (the second half of each chunk)",
        soft_wrap=True,
    )
    ui.print_fields(
        f"reference {Path(report.ref).name}",
        [
            ("size", f"{ui.human_bytes(report.ref_size_bytes)}, {report.ref_bits_per_weight:.2f} bits/weight"),
            ("PPL", _pm(report.ref_ppl)),
        ],
    )
    for r in report.results:
        ui.print_fields(r.name, _rows(r))
    if len(report.results) > 1:
        table = Table(title="against the reference", title_justify="left")
        for col in ("file", "bits/weight", "PPL", "mean KLD", "same top p"):
            table.add_column(col, justify="left" if col == "file" else "right")
        for r in report.results:
            table.add_row(
                r.name,
                f"{r.bits_per_weight:.2f}",
                f"{r.ppl.value:.4f}",
                f"{r.kld.value:.6f}",
                f"{100 * r.same_top_p.value:.3f} %",
            )
        ui.out.print(table)
