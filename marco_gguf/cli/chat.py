"""`chat`: a REPL (or one question with -p) over `marco_gguf.llama.session.ChatSession`.

The loop is plain control flow: read a message (a trailing \\ or a \"\"\" block continues it), run a
slash command or stream the reply, print the measured figures. Replies go to stdout as they are
generated; notices and the dim stats line go to stderr.
"""

from __future__ import annotations

import inspect
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from marco_gguf.base.errors import ChatError, MarcoGGUFError
from marco_gguf.cli import ui
from marco_gguf.cli.options import Ctx, Json, Threads
from marco_gguf.cli.sampling import MinP, RepeatPenalty, Seed, Temp, TopK, TopP, settings
from marco_gguf.llama.session import ChatSession, GenerationStats, Reply

D = {name: p.default for name, p in inspect.signature(ChatSession).parameters.items()}  # one source of defaults
HELP = """\
/help          this list
/reset         forget the conversation (the system message stays)
/system TEXT   set the system message (no TEXT: remove it)
/stats         totals for this session
/save FILE     write the conversation as JSON
/load FILE     replace the conversation with one written by /save
/exit          leave (also Ctrl-D, or Ctrl-C at the prompt)
End a line with \\ to continue it, or put several lines between \"\"\" and \"\"\".
Ctrl-C during a reply stops that reply and keeps what was said."""
BLOCK = '"""'


def chat(
    model: Annotated[Path, typer.Argument(help="A Marco (qwen3moe) GGUF file.")],
    system: Annotated[str | None, typer.Option("--system", help="System message.")] = D["system"],
    ctx: Ctx = D["ctx"],
    threads: Threads = D["threads"],
    temp: Temp = None,
    top_p: TopP = None,
    top_k: TopK = None,
    min_p: MinP = None,
    repeat_penalty: RepeatPenalty = None,
    seed: Seed = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", min=1, help="Longest reply.")] = D["max_tokens"],
    # -p as llama-cli's (a contract of issue 4); bench's -p is llama-bench's prompt length, each as its namesake
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Ask one question, print the answer, exit (llama-cli's -p).")
    ] = None,
    json_out: Json = False,
) -> None:
    """Chat with a Marco GGUF in the terminal, with measured speed after every reply (--json goes with --prompt)."""
    if json_out and prompt is None:
        raise typer.BadParameter("--json needs -p/--prompt", param_hint="--json")
    with ui.errors_to_exit():
        session = ChatSession(
            model,
            system=system,
            ctx=ctx,
            threads=threads,
            sampling=settings(
                temperature=temp, top_p=top_p, top_k=top_k, min_p=min_p, repeat_penalty=repeat_penalty, seed=seed
            ),
            max_tokens=max_tokens,
        )
    with session:
        if note := session.info.context_note(ctx):
            ui.note(note)
        if not session.template.from_gguf:
            notice("the GGUF has no chat template: using ChatML, Marco-Instruct's format")
        if prompt is None:
            repl(session)
            return
        with ui.errors_to_exit():
            reply = session.send(prompt)
            if json_out:
                ui.print_json({"text": consume(reply, None).text, **asdict(reply.stats)})
            else:
                show(reply)


def repl(session: ChatSession, read: Callable[[str], str] = input) -> None:
    """Read, run a command or stream a reply, repeat; Ctrl-C/Ctrl-D at the prompt or /exit ends it."""
    import readline  # noqa: F401  (line editing and history for input(), for this session only)

    dim(f"{session.info.path.name} · ctx {session.ctx:,} · {session.threads} thread(s) · /help for commands")
    while True:
        try:
            text = read_message(read)
            if text.startswith("/"):
                if run_command(session, text.strip()) == "exit":
                    return
            elif text.strip():
                show(session.send(text))
        except (EOFError, KeyboardInterrupt):  # Ctrl-D, or Ctrl-C outside a reply (a reply catches its own)
            sys.stdout.write("\n")
            return
        except MarcoGGUFError as e:  # a refused message or a bad /load file: say so and carry on
            ui.err.print(ui.error_line(e), soft_wrap=True)


def read_message(read: Callable[[str], str]) -> str:
    """One message: a line; lines ending in \\ continue it; a line starting with \"\"\" opens a block."""
    line = read(">>> ")
    if line.lstrip().startswith(BLOCK):
        rest = line.lstrip()[len(BLOCK) :]
        if rest.rstrip().endswith(BLOCK):  # \"\"\"one line\"\"\"
            return rest.rstrip()[: -len(BLOCK)]
        lines = [rest] if rest else []
        while not (line := read("... ")).rstrip().endswith(BLOCK):
            lines.append(line)
        return "\n".join([*lines, line.rstrip()[: -len(BLOCK)]]).strip("\n")
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        line = read("... ")
    return "\n".join([*lines, line])


def run_command(session: ChatSession, text: str) -> str | None:
    name, _, arg = text.partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit", "/bye"):
        return "exit"
    if name == "/help":
        ui.out.print(Text(HELP))
    elif name == "/reset":
        session.reset()
        notice("conversation cleared" + (" (system message kept)" if session.system else ""))
    elif name == "/system":
        session.set_system(arg or None)
        notice(f"system message set ({len(arg)} characters)" if arg else "system message removed")
    elif name == "/stats":
        t = session.totals
        ui.print_fields(
            "session",
            [
                ("turns", f"{t.turns} ({t.interrupted} interrupted, {t.dropped_turns} old turns dropped)"),
                (
                    "prompt",
                    f"{t.prompt_tokens:,} tokens evaluated at {t.prompt_tokens_per_s:,.1f} tok/s, "
                    f"{t.cached_tokens:,} reused from the KV cache",
                ),
                ("generated", f"{t.completion_tokens:,} tokens at {t.completion_tokens_per_s:,.1f} tok/s"),
                ("context", f"{session.context_tokens:,} of {session.ctx:,} tokens in the KV cache"),
            ],
        )
    elif name in ("/save", "/load") and not arg:
        raise ChatError(f"{name} needs a FILE")
    elif name == "/save":
        notice(f"saved {len(session.conversation())} messages to {session.save(arg)}")
    elif name == "/load":
        notice(f"loaded {session.load(arg)} messages from {arg}")
    else:
        notice(f"unknown command {name} (/help lists them)")
    return None


def consume(reply: Reply, write: Callable[[str], object] | None) -> Reply:
    """Iterate `reply`, writing each piece; Ctrl-C asks the session to stop after the current token."""
    previous = signal.signal(signal.SIGINT, lambda *_: reply.interrupt())
    try:
        for piece in reply:
            if write:
                write(piece)
                sys.stdout.flush()
    finally:
        signal.signal(signal.SIGINT, previous)
    return reply


def show(reply: Reply) -> None:
    if reply.dropped_turns:
        notice(f"dropped the {reply.dropped_turns} oldest turn(s) to fit the context (the system message stays)")
    consume(reply, sys.stdout.write)
    if reply.stats.stop_reason == "interrupted":
        sys.stdout.write(" [interrupted]")
    sys.stdout.write("\n")
    sys.stdout.flush()
    dim(stats_line(reply.stats))


def stats_line(s: GenerationStats) -> str:
    cached = f" (+{s.cached_tokens:,} cached)" if s.cached_tokens else ""
    return (
        f"prompt {s.prompt_tokens:,} tokens{cached} at {s.prompt_tokens_per_s:,.1f} tok/s · generated "
        f"{s.completion_tokens:,} tokens at {s.completion_tokens_per_s:,.1f} tok/s · first token "
        f"{s.time_to_first_token_s * 1000:,.0f} ms · stop: {s.stop_reason}"
    )


def dim(text: str) -> None:
    ui.err.print(Text(text, style="dim"), soft_wrap=True)


def notice(text: str) -> None:
    ui.err.print(Text(text, style="yellow"), soft_wrap=True)
