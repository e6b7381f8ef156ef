"""Options that `chat` and `serve` share, declared once (each command gives its library's defaults)."""

from __future__ import annotations

from typing import Annotated

import typer

Threads = Annotated[int | None, typer.Option("--threads", "-t", min=1, help="Threads (default: physical cores).")]
Temp = Annotated[float, typer.Option("--temp", min=0.0, help="Temperature (0: greedy).")]
TopP = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)]
TopK = Annotated[int, typer.Option("--top-k", min=0, help="0: off.")]
MinP = Annotated[float, typer.Option("--min-p", min=0.0, max=1.0)]
RepeatPenalty = Annotated[float, typer.Option("--repeat-penalty", min=0.0, help="1.0: off.")]
Seed = Annotated[int | None, typer.Option("--seed", min=0, help="Sampling seed (default: random).")]
