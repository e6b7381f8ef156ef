"""Options every command shares, declared once: one spelling, one help text and one minimum each.

The sampling options live in cli/sampling.py; bench's --threads takes a list (thread counts to compare)
and is declared there.
"""

from __future__ import annotations

from typing import Annotated

import typer

from marco_gguf.quant.imatrix import MIN_DENSE_TOKENS

# One --ctx minimum for every command: llama.cpp's smallest useful batch. llama-imatrix ignores a matrix
# multiplication over fewer than 16 tokens (tools/imatrix/imatrix.cpp, collect_imatrix), so a shorter chunk
# measures nothing of attention; a shorter context saves no memory either, as llama.cpp pads the KV cache
# to a multiple of 256 cells (src/llama-context.cpp).
CTX_MIN = MIN_DENSE_TOKENS
HELP_OPTION_NAMES = ["-h", "--help"]  # -h as well, as llama.cpp's tools and most CLIs accept it

Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        "-t",
        min=1,
        help="Threads (default: one per physical core to run a model, every core to quantize).",
    ),
]
# a context window (chat, serve, and inspect's RAM estimate) and a chunk of text evaluated as one context
# (experts, imatrix, quality: llama-perplexity's -c) are the same llama.cpp n_ctx
Ctx = Annotated[
    int,
    typer.Option("--ctx", "-c", min=CTX_MIN, help="Context length in tokens (the KV cache holds this many)."),
]
ChunkCtx = Annotated[
    int,
    typer.Option("--ctx", "-c", "--ctx-size", min=CTX_MIN, help="Tokens per chunk: each chunk is one context."),
]


def show_flags_without_a_type() -> None:
    """Typer 0.2x's help labels every option with a type, flags included (`--json <bool>`, `--help <bool>`),
    as if they took a value. A flag takes none: show nothing for it, as click's plain help does. Called once
    by the app; a no-op on a Typer without the label."""
    from typer.core import TyperOption

    label = getattr(TyperOption, "display_type_rich", None)
    if label is None or getattr(label, "flags_unlabelled", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else label(self, ctx)

    display_type_rich.flags_unlabelled = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]
