"""Rendering for the CLI: progress on stderr, results on stdout, errors as one red line.

Both consoles have Rich markup off: every string they print is shown as it is, so a path like
`model[v2].gguf`, a hint like `pip install 'marco-gguf[plots]'` or a file named `[bold red]x.gguf`
can neither lose its brackets, restyle the output nor crash it (a stray `[/]` is a MarkupError).
Style goes through `Text` and `style=` only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from marco_gguf.base.errors import MarcoGGUFError, Terminated, raise_terminated
from marco_gguf.base.progress import ProgressEvent
from marco_gguf.base.units import human_bytes

__all__ = ["err", "human_bytes", "out"]

out = Console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False)
PIPED_EVERY = 10.0  # seconds between progress lines when stderr is a pipe or a file (a log)


def _count(e: ProgressEvent, speed: float) -> str:
    """The figures beside the bar, by unit: sizes and speed for bytes, counts (and a rate) for the rest."""
    if e.unit == "bytes":
        total = f"/{human_bytes(e.total)}" if e.total else ""
        return f"{human_bytes(e.done)}{total} · {human_bytes(speed)}/s"
    total = f"/{e.total:,.0f}" if e.total else ""
    rate = f" · {e.rate:,.0f} {e.rate_unit}" if e.rate is not None else ""
    return f"{e.done:,.0f}{total} {e.unit}{rate}"


class _Counter:
    """Speed of the unit being counted: a call that changes unit (convert --calibrate) restarts the count."""

    def __init__(self) -> None:
        self.unit, self.t0 = "", 0.0

    def speed(self, e: ProgressEvent) -> tuple[float, bool]:
        now, restarted = time.perf_counter(), e.unit != self.unit
        if restarted:
            self.unit, self.t0 = e.unit, now
        return e.done / max(1e-9, now - self.t0), restarted


@contextlib.contextmanager
def progress_bar(label: str, *, quiet: bool) -> Iterator[Callable[[ProgressEvent], None] | None]:
    """Progress of any library call's ProgressEvents on stderr: one Rich bar on a terminal, a line every
    PIPED_EVERY seconds on a pipe or in a log (so a long job shows it is alive); yields None when quiet."""
    if quiet:
        yield None
    elif not err.is_terminal:
        yield _lines(label)
    else:
        with _bar(label) as update:
            yield update


def _lines(label: str) -> Callable[[ProgressEvent], None]:
    counter, last = _Counter(), [time.perf_counter()]

    def update(e: ProgressEvent) -> None:
        speed, _ = counter.speed(e)
        if time.perf_counter() - last[0] >= PIPED_EVERY:
            last[0] = time.perf_counter()
            share = f" ({e.done / e.total:.0%})" if e.total else ""
            err.print(f"{label}: {_count(e, speed)}{share}" + (f" · {e.what}" if e.what else ""), soft_wrap=True)

    return update


@contextlib.contextmanager
def _bar(label: str) -> Iterator[Callable[[ProgressEvent], None]]:
    columns = (  # markup off in every column: `what` names files and tensors
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        TextColumn("{task.fields[count]}", markup=False),
        TimeRemainingColumn(),
        TextColumn("{task.fields[what]}", style="dim", markup=False),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task, counter = bar.add_task(label, total=None, count="", what=""), _Counter()

        def update(e: ProgressEvent) -> None:
            speed, restarted = counter.speed(e)
            if restarted:
                bar.reset(task)
            bar.update(task, completed=e.done, total=e.total, count=_count(e, speed), what=e.what)

        yield update


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_fields(title: str, rows: Sequence[tuple[str, str | Text]]) -> None:
    """A plain title line, then `key  value` rows, never wrapped: a path in the title or a value stays on one
    line, copyable, however narrow the terminal (a table would break it mid-word)."""
    out.print(Text(title, style="bold"), soft_wrap=True)
    width = max((len(k) for k, _ in rows), default=0)
    for k, v in rows:
        out.print(Text.assemble((k.ljust(width), "bold"), "  ", v if isinstance(v, Text) else Text(v)), soft_wrap=True)


def note(text: str) -> None:
    """A remark on stderr (not an error): the run goes on."""
    err.print(Text("note: ", style="yellow") + Text(text), soft_wrap=True)


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    """Typed errors -> one red line and exit 1; Ctrl-C -> a short line and exit 130, SIGTERM the same and exit 143
    (MARCO_GGUF_DEBUG=1 re-raises). SIGTERM is raised as an exception for the block, so nothing is left behind."""
    debug = bool(os.environ.get("MARCO_GGUF_DEBUG"))
    try:
        with _terminate_raises():
            yield
    except MarcoGGUFError as e:
        if debug:
            raise
        err.print(error_line(e), soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as e:
        if debug:
            raise
        what, code = ("terminated", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        err.print(Text(what, style="yellow") + Text(": nothing was left half-written"))
        raise typer.Exit(code) from None


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """SIGTERM's default ends the process on the spot, leaving temp files; raise Terminated instead (main thread
    only, and only where nobody installed a handler of their own)."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def error_line(e: MarcoGGUFError) -> Text:
    """`error: MESSAGE — HINT`, the message and hint shown exactly as written."""
    line = Text("error:", style="red") + Text(f" {e.message}")
    return line + Text(f" — {e.hint}", style="dim") if e.hint else line
