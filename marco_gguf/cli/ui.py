"""Rendering for the CLI: one progress bar on stderr, results on stdout, errors as one red line."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Callable, Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from ..errors import MarcoGGUFError

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def byte_progress(label: str, *, quiet: bool) -> Iterator[Callable[..., None] | None]:
    """A Rich bar counting bytes on stderr; yields None (no bar) when quiet or stderr is not a terminal."""
    if quiet or not err.is_terminal:
        yield None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn(), TextColumn("[dim]{task.fields[what]}"))
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None, what="")

        def update(done: int, total: int, what: str = "") -> None:
            bar.update(task, completed=done, total=total, what=what)

        yield update


@contextlib.contextmanager
def chunk_progress(label: str, *, quiet: bool) -> Iterator[Callable[..., None] | None]:
    """A Rich bar counting chunks on stderr with the running tokens/s; None when quiet or not a terminal."""
    if quiet or not err.is_terminal:
        yield None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None, rate="")

        def update(done: int, total: int, tokens_per_s: float) -> None:
            bar.update(task, completed=done, total=total, rate=f"{tokens_per_s:,.0f} tokens/s")

        yield update


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_fields(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)


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
