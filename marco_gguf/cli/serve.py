"""`serve`: an OpenAI-compatible HTTP server, over `marco_gguf.server.serve`."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from marco_gguf.base.progress import ProgressEvent
from marco_gguf.cli import ui
from marco_gguf.cli.options import Ctx, Threads
from marco_gguf.cli.sampling import MinP, RepeatPenalty, Seed, Temp, TopK, TopP, settings
from marco_gguf.server import serve as lib_serve

D = {name: p.default for name, p in inspect.signature(lib_serve).parameters.items()}  # one source of defaults
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    model: Annotated[Path, typer.Argument(help="A Marco (qwen3moe) GGUF file.")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = D["host"],
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free one).")] = D["port"],
    parallel: Annotated[
        int, typer.Option("--parallel", min=1, max=64, help="Requests generated at once (slots, sharing one --ctx).")
    ] = D["parallel"],
    ctx: Ctx = D["ctx"],
    threads: Threads = D["threads"],
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="MARCO_GGUF_API_KEY", help="Require Authorization: Bearer KEY (/health stays open)."
        ),
    ] = D["api_key"],
    queue: Annotated[int, typer.Option("--queue", min=0, help="Requests that may wait for a slot; more get 503.")] = D[
        "queue"
    ],
    cors: Annotated[
        str | None,
        typer.Option("--cors", metavar="ORIGIN", help="Allow browser requests from ORIGIN (off by default)."),
    ] = D["cors"],
    slot_prompt_similarity: Annotated[
        float,
        typer.Option(
            "--slot-prompt-similarity",
            min=0.0,
            max=1.0,
            help="Reuse an idle slot's cached conversation only when it holds more than this fraction of the prompt;"
            " else take an empty slot, else the least recently used (llama-server's option; 0: no prefix matching).",
        ),
    ] = D["slot_prompt_similarity"],
    temp: Temp = None,
    top_p: TopP = None,
    top_k: TopK = None,
    min_p: MinP = None,
    repeat_penalty: RepeatPenalty = None,
    seed: Seed = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", "-n", min=1, help="Longest reply when a request sets no max_tokens.")
    ] = D["max_tokens"],
) -> None:
    """Serve a Marco GGUF over OpenAI's HTTP API (chat, completions, tools, JSON output) to several clients at once."""
    if host not in LOOPBACK and not api_key:
        ui.err.print(
            Text(
                f"warning: listening on {host} without --api-key: anyone who can reach this machine can use the model",
                style="yellow",
            ),
            soft_wrap=True,
        )

    def progress(e: ProgressEvent) -> None:  # a server's two steps are lines, not a bar: it runs until stopped
        ui.err.print(Text(e.what + (" (Ctrl-C to stop)" if e.done == e.total else ""), style="dim"), soft_wrap=True)

    with ui.errors_to_exit():
        lib_serve(
            model,
            host=host,
            port=port,
            parallel=parallel,
            ctx=ctx,
            threads=threads,
            api_key=api_key,
            queue=queue,
            cors=cors,
            sampling=settings(
                temperature=temp, top_p=top_p, top_k=top_k, min_p=min_p, repeat_penalty=repeat_penalty, seed=seed
            ),
            max_tokens=max_tokens,
            slot_prompt_similarity=slot_prompt_similarity,
            progress=progress,
        )
