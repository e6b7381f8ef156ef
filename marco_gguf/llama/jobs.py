"""What a request to the engine is and what it gives back (its sampling, its job while it runs, its result),
and what the engine reports (metrics) or lends out (its context, for bench).

The engine (engine.py) owns the llama.cpp calls; these are plain Python, shared by the server, `chat` and
`bench`. `Timings` keeps llama-server's field names so that clients written for it read ours.
"""

from __future__ import annotations

import codecs
import queue
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass


def rate(n: float, seconds: float) -> float:
    """Per second, 0 for no time (a rate nobody measured)."""
    return n / seconds if seconds > 0 else 0.0


@dataclass(frozen=True)
class Timings:
    """llama-server's `timings` object (server-common.cpp, server_slot_stats::to_json), same field names."""

    cache_n: int  # prompt tokens reused from the slot's KV cache
    prompt_n: int  # prompt tokens evaluated
    prompt_ms: float
    predicted_n: int  # tokens generated
    predicted_ms: float  # from the first generated token to the last

    def as_dict(self) -> dict:
        per = lambda n, ms: (ms / n if n else 0.0, rate(n, ms / 1000))  # noqa: E731
        (ppt, pps), (gpt, gps) = per(self.prompt_n, self.prompt_ms), per(self.predicted_n, self.predicted_ms)
        return {
            **asdict(self),
            "prompt_per_token_ms": ppt,
            "prompt_per_second": pps,
            "predicted_per_token_ms": gpt,
            "predicted_per_second": gps,
        }


@dataclass(frozen=True)
class Result:
    """A finished request: finish_reason is stop (end of turn or a stop string), length (max_tokens, the
    context, or a server shutdown), cancelled (the client went away) or error (llama.cpp failed)."""

    text: str
    tokens: tuple[int, ...]
    finish_reason: str
    prompt_tokens: int
    timings: Timings
    time_to_first_token_s: float
    error: str | None = None


class Job:
    """A submitted request. Events go to `sink` (from the engine thread: keep it quick and non-blocking):
    a str per piece of text, then the Result. Without a sink, iterate the job for its text pieces."""

    def __init__(
        self,
        id: int,
        prompt: list[int],
        max_tokens: int,
        stop: Sequence[str],
        sampler,
        sink: Callable[[str | Result], object] | None,
        wake: Callable[[], None],
        scales: tuple[float, ...] = (),
    ) -> None:
        self.id = id
        self.scales = scales  # of the engine's LoRA adapters, one each (lora_sets.py)
        self.prompt, self.max_tokens, self.stop, self.sampler = prompt, max_tokens, tuple(s for s in stop if s), sampler
        self.result: Result | None = None
        self._wake = wake  # tells the engine thread to look at this job again
        self._queue: queue.SimpleQueue[str | Result] = queue.SimpleQueue()
        self._ended = False
        self._sink = sink or self._queue.put
        self.cancelled = False
        self.submitted = time.perf_counter()
        self.admitted = self.first = self.last = 0.0
        self.tokens: list[int] = []
        self.sampled = 0  # tokens drawn, the one that ended the reply included
        self.cached = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._text, self._sent = "", 0  # text generated, and how much of it went out (the rest may start a stop)
        self._hit = False  # a stop string ended the text

    def cancel(self) -> None:
        """Stop generating: the slot is freed at the engine's next step (safe from any thread)."""
        self.cancelled = True
        self._wake()

    def __iter__(self) -> Iterator[str]:
        while not self._ended:
            event = self._queue.get()
            if isinstance(event, Result):
                self._ended = True  # the queue is empty for good: a second iteration (wait) must not block
                return
            yield event

    def wait(self) -> Result:
        for _ in self:
            pass
        assert self.result is not None  # the iteration ends with the Result
        return self.result

    # called from the engine thread
    def _emit(self, event: str | Result) -> None:
        try:
            self._sink(event)
        except Exception:  # a consumer that went away must not stop the engine
            self.cancelled = True

    def _add_text(self, piece: str) -> bool:
        """Append generated text, send what cannot start a stop string; True when a stop string appeared."""
        self._text += piece
        hits = [i for i in (self._text.find(s, max(0, self._sent - len(s))) for s in self.stop) if i >= 0]
        if hits:
            self._text, self._hit = self._text[: min(hits)], True
            end = len(self._text)
        else:  # hold back a tail that is the start of a stop string (llama-server does the same)
            held = max(
                (
                    n
                    for s in self.stop
                    for n in range(min(len(s) - 1, len(self._text)), 0, -1)
                    if self._text.endswith(s[:n])
                ),
                default=0,
            )
            end = len(self._text) - held
        if end > self._sent:
            self._emit(self._text[self._sent : end])
            self._sent = end
        return bool(hits)


@dataclass(frozen=True)
class Direct:
    """What `Engine.exclusive` lends out: the raw llama_context, its batch size and the vocabulary size."""

    ctx: object
    n_batch: int
    n_vocab: int


@dataclass(frozen=True)
class EngineMetrics:
    """Counters and gauges for /metrics (names follow llama-server's, server-task.cpp to_metrics)."""

    requests_total: int
    requests_cancelled_total: int
    prompt_tokens_total: int
    prompt_tokens_cached_total: int
    prompt_seconds_total: float
    tokens_predicted_total: int
    tokens_predicted_seconds_total: float
    n_decode_total: int
    busy_slots: int
    slots: int
    queued: int
    queue_size: int
    kv_cache_tokens: int
    kv_cache_size: int
    slot_cache_tokens: tuple[int, ...] = ()  # per slot, in slot order


@dataclass(frozen=True)
class SlotState:
    """One generation slot as GET /slots reports it (llama-server's server_slot::to_json)."""

    id: int
    cache_tokens: int  # tokens of this slot's sequence in the KV cache
    job: int | None = None  # the request generating in it, None when idle
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, reused from the cache
    generated: int = 0
    max_tokens: int = 0
