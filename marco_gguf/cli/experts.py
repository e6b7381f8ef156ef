"""`experts`: which experts each text uses, over `marco_gguf.experts.usage.expert_usage`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from marco_gguf.cli import ui
from marco_gguf.cli.options import ChunkCtx, Json, Quiet, Threads
from marco_gguf.experts.report import build_report
from marco_gguf.experts.usage import expert_usage


def experts(
    model: Annotated[Path, typer.Argument(help="A Marco (qwen3moe) GGUF.")],
    text: Annotated[
        list[Path] | None,
        typer.Option(
            "--text", "-f", help="A UTF-8 text (repeatable; default: the built-in multilingual calibration text)."
        ),
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Name of each --text, in order (default: the file's stem).")
    ] = None,
    ctx: ChunkCtx = 512,
    threads: Threads = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write heat maps and the similarity matrix to this PNG (needs matplotlib)."),
    ] = None,
    usage: Annotated[
        Path | None, typer.Option("--usage", help="Write the measurement here, for `prune --usage`.")
    ] = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Which experts each text routes to: mass concentration, entropy, unused experts, overlap between texts."""
    with ui.errors_to_exit(), ui.progress_bar("routing", quiet=quiet or json_out) as progress:
        r = expert_usage(
            model, text or [None], labels=label, ctx=ctx, threads=threads, usage=usage, plot=plot, progress=progress
        )
    report = build_report(r)
    if json_out:
        ui.print_json({"report": report.as_dict(), **r.as_dict()})
        return
    m = r.model
    ui.out.print(
        f"{m.file}: {m.layers} layers, {m.experts} experts, {m.experts_per_token} per token; "
        f"{sum(t.tokens for t in r.texts):,} tokens at {r.tokens_per_s:,.0f} tokens/s",
        soft_wrap=True,
    )
    # the legend as a line of its own: a table's caption wraps to the table's width (a 20-column box)
    ui.out.print("50 / 90 / 99 %: the experts carrying that share of the routing mass", style="dim", soft_wrap=True)
    for t in report.texts:
        table = Table(title=f"{t.label} ({t.tokens:,} tokens)", title_justify="left")
        for col in ("layer", "50 %", "90 %", "99 %", "entropy bits", "unused", "specific"):
            table.add_column(col, justify="right")
        for f in t.layers:
            table.add_row(
                str(f.layer),
                *(str(f.experts_for_mass[k]) for k in ("50", "90", "99")),
                f"{f.entropy_bits:.2f}",
                str(len(f.never_used)),
                str(len(f.specific)),
            )
        ui.out.print(table)
    if len(r.texts) > 1:
        table = Table(title="core-expert overlap (Jaccard)", title_justify="left")
        table.add_column("")
        for name in r.labels:
            table.add_column(name, justify="right")
        for name, row in zip(r.labels, report.similarity):
            table.add_row(name, *(f"{v:.2f}" for v in row))
        ui.out.print(table)
        ui.out.print(
            f"core: the experts carrying {round(100 * report.core_mass)} % of a text's routing mass; mean over layers",
            style="dim",
            soft_wrap=True,
        )
    for what, path in (("usage", usage), ("plot", plot)):
        if path is not None:
            ui.out.print(f"wrote {what} {path}", soft_wrap=True)
