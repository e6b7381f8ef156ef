"""Options that `chat` and `serve` share, declared once. Sampling options default to "not set": the model's own
settings (its GGUF's general.sampling.*, else Marco's defaults; arch/sampling.py) apply to what the user leaves."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from marco_gguf.arch.sampling import Sampling

M = Sampling()  # Marco's defaults, named in the help texts
MODEL = "default: the model's own, else"

Temp = Annotated[
    float | None,
    typer.Option("--temp", min=0.0, show_default=False, help=f"Temperature, 0: greedy ({MODEL} {M.temperature})."),
]
TopP = Annotated[
    float | None, typer.Option("--top-p", min=0.0, max=1.0, show_default=False, help=f"{MODEL} {M.top_p}.")
]
TopK = Annotated[int | None, typer.Option("--top-k", min=0, show_default=False, help=f"0: off ({MODEL} {M.top_k}).")]
MinP = Annotated[
    float | None, typer.Option("--min-p", min=0.0, max=1.0, show_default=False, help=f"{MODEL} {M.min_p}.")
]
RepeatPenalty = Annotated[
    float | None,
    typer.Option("--repeat-penalty", min=0.0, show_default=False, help=f"1.0: off ({MODEL} {M.repeat_penalty})."),
]
Seed = Annotated[int | None, typer.Option("--seed", min=0, help="Sampling seed (default: random).")]


def settings(**options: Any) -> dict[str, Any]:
    """The sampling options the user gave, by Sampling field (what they left out stays the model's)."""
    return {k: v for k, v in options.items() if v is not None}
