"""A chat session that keeps its KV cache, with measured throughput: a conversation over the engine.

`ChatSession` formats the conversation with the GGUF's own chat template and submits it to a one-slot
`Engine` (the one `serve` runs with more slots): the engine evaluates only the tokens its KV cache
does not already hold, samples with llama.cpp's C sampler chain and streams the text back. What the
layer costs per token is measured in benchmarks/runtime_overhead.md. Rates are wall clock: what the
person at the terminal gets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from marco_gguf.arch.qwen3moe import DEFAULT_CTX
from marco_gguf.base.errors import ChatError, RequestError
from marco_gguf.llama.engine import Engine, Job, Result, nfc
from marco_gguf.llama.jobs import rate

ROLES = ("system", "user", "assistant")
LOAD_HINT = 'expected {"messages": [{"role": "user", "content": "..."}, ...]} as /save writes it'


@dataclass(frozen=True)
class GenerationStats:
    """One reply's measured figures: prompt evaluation, generation (per decode+sample step), first token."""

    prompt_tokens: int  # tokens evaluated for this prompt (the KV cache held the rest)
    prompt_tokens_per_s: float
    completion_tokens: int  # reply tokens, not counting the end-of-turn token
    completion_tokens_per_s: float
    time_to_first_token_s: float  # from send to the first sampled token: tokenize + prompt + one sample
    stop_reason: str  # stop (end of turn), length (--max-tokens), context (--ctx full), interrupted, error
    cached_tokens: int = 0  # prompt tokens reused from the KV cache instead of evaluated


@dataclass
class SessionStats:
    """Totals over a session (`/stats`)."""

    turns: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0
    generation_steps: int = 0
    dropped_turns: int = 0
    interrupted: int = 0

    @property
    def prompt_tokens_per_s(self) -> float:
        return rate(self.prompt_tokens, self.prompt_seconds)

    @property
    def completion_tokens_per_s(self) -> float:
        return rate(self.generation_steps, self.generation_seconds)

    def add(
        self, s: GenerationStats, prompt_seconds: float, generation_seconds: float, steps: int, dropped: int
    ) -> None:
        self.turns += 1
        self.prompt_tokens += s.prompt_tokens
        self.cached_tokens += s.cached_tokens
        self.completion_tokens += s.completion_tokens
        self.prompt_seconds += prompt_seconds
        self.generation_seconds += generation_seconds
        self.generation_steps += steps
        self.dropped_turns += dropped
        self.interrupted += s.stop_reason == "interrupted"

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "prompt_tokens_per_s": self.prompt_tokens_per_s,
            "completion_tokens_per_s": self.completion_tokens_per_s,
        }


class Reply:
    """One assistant turn. Iterate it for text as it is generated; then `text` and `stats` hold the result.
    `dropped_turns` (known before the first piece) counts old turns removed to fit the context."""

    def __init__(self, session: ChatSession, job: Job, prompt_text: str, dropped_turns: int, sent: float) -> None:
        self.dropped_turns, self.text, self.sent = dropped_turns, "", sent
        self._stats: GenerationStats | None = None
        self.prompt, self.tokens = job.prompt, list[int]()  # the prompt's tokens and, once generated, the reply's
        self.interrupt = job.cancel  # stop after the current token (safe from a signal handler)
        self._job, self._prompt_text = job, prompt_text
        self._pieces = session._stream(self)

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    @property
    def stats(self) -> GenerationStats:
        """Figures of the finished turn (iterate the reply, or `wait()`, first)."""
        if self._stats is None:
            raise ChatError("the reply is still being generated: read it to the end first")
        return self._stats

    def wait(self) -> Reply:
        for _ in self:
            pass
        return self


class ChatSession:
    """A conversation with a Marco GGUF that reuses its KV cache from turn to turn (a one-slot Engine)."""

    def __init__(
        self,
        model: str | Path,
        *,
        system: str | None = None,
        ctx: int = DEFAULT_CTX,
        threads: int | None = None,
        sampling: Mapping[str, Any] | None = None,
        max_tokens: int = 2048,
    ) -> None:
        """`sampling`: settings by `Sampling` field (temperature, top_p, top_k, min_p, repeat_penalty, seed) over
        the model's own defaults (its GGUF's general.sampling.*, else Marco's); None values are not set."""
        self.engine = Engine(model, ctx=ctx, parallel=1, threads=threads, queue_size=1, sampling=sampling)
        self.info, self.template, self.stop_tokens = self.engine.info, self.engine.template, self.engine.stop_tokens
        self.ctx, self.max_tokens, self.threads = ctx, max_tokens, self.engine.threads
        self.sampling = self.engine.sampling
        self.system = nfc(system) if system else None
        self.messages: list[dict] = []  # user/assistant turns; the system message is kept apart, never dropped
        self.totals = SessionStats()
        self._seen: tuple[str, list[int]] = ("", [])  # last prompt + reply as text and as the tokens the model saw
        self._active: Reply | None = None  # the reply being generated, if any

    def token_text(self, token: int) -> str:
        return self.engine.token_text(token)

    # the conversation
    def conversation(self) -> list[dict]:
        """All messages as the template sees them: the system message (if any) first."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    def prompt_tokens(self, messages: list[dict] | None = None) -> list[int]:
        """The canonical tokens of `messages` (default: this conversation) plus the generation prompt."""
        return self.engine.tokenize(self.template.render(self.conversation() if messages is None else messages))

    def _prompt(self, messages: list[dict]) -> tuple[str, list[int]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        text = self.template.render(system + messages)
        seen_text, seen_tokens = self._seen
        if seen_text and text.startswith(seen_text):  # keep the reply tokens the model produced, add the rest
            return text, seen_tokens + self.engine.tokenize(text[len(seen_text) :])
        return text, self.engine.tokenize(text)

    def send(self, text: str) -> Reply:
        """Add a user message and return the Reply to iterate; old turns are dropped if the context is short."""
        sent = time.perf_counter()
        self._end_active()
        messages, dropped = [*self.messages, {"role": "user", "content": nfc(text)}], 0
        reserve = min(self.max_tokens, self.ctx // 2)  # room left for the answer
        while True:
            prompt_text, tokens = self._prompt(messages)
            if len(tokens) + reserve <= self.ctx:
                break
            nxt = next((i for i, m in enumerate(messages) if i > 0 and m["role"] == "user"), None)
            if nxt is None:
                raise ChatError(
                    f"the message is too long: {len(tokens):,} prompt tokens + {reserve:,} for the reply "
                    f"exceed --ctx {self.ctx:,}",
                    "shorten it, raise --ctx or lower --max-tokens",
                )
            del messages[:nxt]
            dropped += 1
        try:
            job = self.engine.submit(tokens, max_tokens=self.max_tokens, sampling=self.sampling)
        except RequestError as e:
            raise ChatError(e.message, e.hint) from None
        self.messages = messages
        self._active = Reply(self, job, prompt_text, dropped, sent)
        return self._active

    def _end_active(self) -> None:
        reply = self._active
        if reply is not None:  # a reply left half-read (or unread) ends here, kept and marked as interrupted
            reply._pieces.close()
            self._settle(reply)  # a generator closed before it started never ran its finally

    def interrupt(self) -> None:
        """Stop the reply in progress after the current token (safe to call from a signal handler)."""
        if self._active is not None:
            self._active.interrupt()

    def _stream(self, reply: Reply) -> Generator[str, None, None]:
        try:
            yield from reply._job
        finally:  # also on Ctrl-C or an abandoned iteration: the partial reply is kept and marked
            result = self._settle(reply)
        if result.error:
            raise ChatError(result.error, "set MARCO_GGUF_DEBUG=1 to see llama.cpp's log")

    def _settle(self, reply: Reply) -> Result:
        """End the reply's job (cancelled if it still runs) and record the turn, once."""
        job = reply._job
        if job.result is None:
            job.cancel()
        result = job.wait()
        if reply._stats is None:
            self._record(reply, job, result, reply._prompt_text)
        if self._active is reply:
            self._active = None
        return result

    def _record(self, reply: Reply, job: Job, result: Result, prompt_text: str) -> None:
        reason = {"cancelled": "interrupted", "stop": "stop", "error": "error"}.get(result.finish_reason)
        if reason is None:  # length: --max-tokens, or the context ran out first
            reason = "length" if len(result.tokens) >= self.max_tokens else "context"
        reply.text, reply.tokens = result.text, list(result.tokens)
        interrupted = {"interrupted": True} if reason == "interrupted" else {}
        self.messages.append({"role": "assistant", "content": reply.text, **interrupted})
        self._seen = (prompt_text + reply.text, reply.prompt + reply.tokens)
        t = result.timings
        steps = max(job.sampled - 1, 0)  # decode+sample steps after the first token, as llama-bench's tg counts
        reply._stats = stats = GenerationStats(
            prompt_tokens=t.prompt_n,
            prompt_tokens_per_s=rate(t.prompt_n, t.prompt_ms / 1000),
            completion_tokens=len(result.tokens),
            completion_tokens_per_s=rate(steps, t.predicted_ms / 1000),
            time_to_first_token_s=(job.first - reply.sent) if job.first else 0.0,
            stop_reason=reason,
            cached_tokens=t.cache_n,
        )
        self.totals.add(stats, t.prompt_ms / 1000, t.predicted_ms / 1000, steps, reply.dropped_turns)

    @property
    def context_tokens(self) -> int:
        """Tokens the KV cache holds now (of `ctx`)."""
        return self.engine.kv_tokens()

    # slash-command helpers
    def reset(self) -> None:
        """Forget the turns (the system message stays; its KV cache is reused)."""
        self._end_active()
        self.messages, self._seen = [], ("", [])

    def set_system(self, text: str | None) -> None:
        self._end_active()
        self.system, self._seen = (nfc(text) if text else None), ("", [])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        try:
            path.write_text(
                json.dumps(
                    {"model": self.info.path.name, "messages": self.conversation()}, ensure_ascii=False, indent=2
                )
                + "\n",
                encoding="utf-8",
            )
        except OSError as e:
            raise ChatError(f"{path}: cannot write the conversation ({e.strerror})") from None
        return path

    def load(self, path: str | Path) -> int:
        """Replace the conversation (system message included) with the one saved in `path`; returns its length."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ChatError(f"{path}: cannot read it ({e.strerror})") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ChatError(f"{path}: not a saved conversation (invalid JSON: {e})") from None
        messages = data.get("messages") if isinstance(data, dict) else data
        if not isinstance(messages, list):
            raise ChatError(f"{path}: not a saved conversation (no list of messages)", LOAD_HINT)
        for i, m in enumerate(messages):
            roles = ROLES if i == 0 else ROLES[1:]  # a system message only comes first
            if not (isinstance(m, dict) and m.get("role") in roles and isinstance(m.get("content"), str)):
                raise ChatError(
                    f"{path}: not a saved conversation (message {i + 1} is {json.dumps(m)[:60]})", LOAD_HINT
                )
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        self.set_system(system)
        self.messages = [{**m, "content": nfc(m["content"])} for m in messages[1 if system is not None else 0 :]]
        return len(messages)

    def close(self) -> None:
        self._end_active()
        self.engine.close()

    def __enter__(self) -> ChatSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
