"""What `convert` prints for a planned file: the plan beside the fixed presets of neighbouring size."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from marco_gguf.cli import ui


def _error(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def print_plan(plan: dict, plan_out: Path | None) -> None:
    """The plan's size, bits/weight, bytes per token and estimated error, and the same for the fixed presets
    just smaller and just larger (their error estimated from the same measurements)."""
    table = Table(title=f"plan for {escape(plan['target'])}: {escape(plan['objective'])}", title_justify="left")
    for col in ("", "size", "bits/weight", "bytes/token", "estimated error"):
        table.add_column(col, justify="left" if not col else "right")
    rows = sorted([plan["plan"], *plan["neighbours"]], key=lambda p: p["size_bytes"])
    for p in rows:
        label = f"[bold]{escape(p['preset'])} (plan)[/bold]" if p is plan["plan"] else escape(p["preset"])
        table.add_row(
            label,
            f"{ui.human_bytes(p['size_bytes'])} ({p['size_bytes']:,} B)",
            f"{p['bits_per_weight']:.3f}",
            ui.human_bytes(p["bytes_per_token"]),
            _error(p["estimated_error"]),
        )
    ui.out.print(table)
    measured = f"{plan['measured']} measured, {plan['cached']} from the cache {escape(plan['cache'])}"
    ui.out.print(f"[dim]errors per (tensor, type): {measured}; planning took {plan['seconds']:.1f} s[/dim]")
    if plan_out is not None:
        ui.out.print(f"plan written to {escape(str(plan_out))} (use it with --preset)")
