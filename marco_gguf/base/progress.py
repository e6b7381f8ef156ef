"""The one progress event every long-running library call reports, carrying its unit.

A callback receives `ProgressEvent`s; the CLI draws one bar on stderr and picks its columns by unit
(bytes: size and speed; parameters, chunks: counts), so `verify`, which counts parameters, is no
longer drawn as bytes and MB/s. `rate` is an optional extra figure in `rate_unit` (tokens/s for work
over text chunks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

UNITS = ("bytes", "parameters", "chunks", "steps")


@dataclass(frozen=True)
class ProgressEvent:
    done: float
    total: float | None  # None while the total is unknown (a bench step)
    unit: str  # one of UNITS
    what: str = ""  # the tensor, pass or step in progress
    rate: float | None = None
    rate_unit: str = ""


Progress = Callable[[ProgressEvent], None]
