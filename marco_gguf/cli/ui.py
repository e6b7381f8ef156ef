"""Rendering for the CLI: one progress bar on stderr, results on stdout, errors as one red line."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from marco_gguf.base.errors import MarcoGGUFError
from marco_gguf.base.progress import ProgressEvent

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _count(e: ProgressEvent, speed: float) -> str:
    """The figures beside the bar, by unit: sizes and speed for bytes, counts (and a rate) for the rest."""
    if e.unit == "bytes":
        total = f"/{human_bytes(e.total)}" if e.total else ""
        return f"{human_bytes(e.done)}{total} · {human_bytes(speed)}/s"
    total = f"/{e.total:,.0f}" if e.total else ""
    rate = f" · {e.rate:,.0f} {e.rate_unit}" if e.rate is not None else ""
    return f"{e.done:,.0f}{total} {e.unit}{rate}"


@contextlib.contextmanager
def progress_bar(label: str, *, quiet: bool) -> Iterator[Callable[[ProgressEvent], None] | None]:
    """One Rich bar on stderr for any library call's ProgressEvents, drawn by their unit (a call that changes
    unit, like convert --calibrate, restarts the count); yields None when quiet or stderr is not a terminal."""
    if quiet or not err.is_terminal:
        yield None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TimeRemainingColumn(),
        TextColumn("[dim]{task.fields[what]}"),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None, count="", what="")
        unit, t0 = [""], [0.0]  # the unit being counted and when its count started

        def update(e: ProgressEvent) -> None:
            now = time.perf_counter()
            if e.unit != unit[0]:
                unit[0], t0[0] = e.unit, now
                bar.reset(task)
            speed = e.done / max(1e-9, now - t0[0])
            bar.update(task, completed=e.done, total=e.total, count=_count(e, speed), what=e.what)

        yield update


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_fields(title: str, rows: list[tuple[str, str]]) -> None:
    """A plain title line, then `key  value` rows (values are markup), never wrapped: a path in the title or a
    value stays on one line, copyable, however narrow the terminal (a table would break it mid-word)."""
    out.print(title, markup=False, soft_wrap=True)
    width = max((len(k) for k, _ in rows), default=0)
    for k, v in rows:
        out.print(Text.assemble((k.ljust(width), "bold"), "  ", Text.from_markup(v)), soft_wrap=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    """Typed errors -> one red line and exit 1; Ctrl-C -> a short line and exit 130 (MARCO_GGUF_DEBUG=1 re-raises)."""
    debug = bool(os.environ.get("MARCO_GGUF_DEBUG"))
    try:
        yield
    except MarcoGGUFError as e:
        if debug:
            raise
        err.print(f"[red]error:[/red] {e.message}" + (f" [dim]— {e.hint}[/dim]" if e.hint else ""), soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        if debug:
            raise
        err.print("[yellow]interrupted[/yellow]: nothing was left half-written")
        raise typer.Exit(130) from None
