"""A continuous-batching engine: one llama.cpp context, `parallel` slots, one `llama_decode` per step.

Modelled on llama.cpp's tools/server (server-context.cpp): the context holds `n_seq_max = parallel`
sequences in one unified KV cache (`kv_unified`, so any slot may use the whole `ctx`); every step
decodes one batch carrying the next token of each generating slot plus a chunk of any admitted
prompt (at most `batch` tokens in all), so a long prompt delays the others by at most one chunk;
requests with other LoRA adapter scales go in other batches, taking turns (lora_sets.py).
Each request has its own sampler chain (seed, penalties, grammar). A request goes to a free slot
chosen as llama-server chooses (slots.py: the one whose cache shares enough of its prompt, else an
empty one, else the least recently used); only the rest of its prompt is evaluated
(`llama_memory_seq_rm` drops the tail that differs). A cancelled request frees its slot at the next
step. `serve` runs it with `--parallel` slots, `chat` (runtime.ChatSession) with one, and `bench` times
llama_decode on its context (`exclusive`), so all three load and run a model one way. The raw
llama_cpp calls of the feature live here.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marco_gguf.arch.chat_template import ChatTemplate
from marco_gguf.arch.qwen3moe import DEFAULT_BATCH, DEFAULT_CTX, END_OF_TURN
from marco_gguf.arch.sampling import Sampling, model_sampling
from marco_gguf.base.errors import RequestError, ServeError, ServerBusyError
from marco_gguf.base.machine import physical_cores
from marco_gguf.llama.jobs import Direct, EngineMetrics, Job, Result, SlotState, Timings
from marco_gguf.llama.loader import check_model, load_weights, quiet_stderr
from marco_gguf.llama.lora import Adapters, LoraFile
from marco_gguf.llama.lora_sets import Scales, Turns, check_scales, made_for
from marco_gguf.llama.sampler import sampler_chain
from marco_gguf.llama.slots import SLOT_PROMPT_SIMILARITY, check_similarity, choose_slot, common_prefix

__all__ = ["MAX_PARALLEL", "Direct", "Engine", "EngineMetrics", "Job", "Result", "Sampling", "Timings", "sampler_chain"]

MAX_PARALLEL = 64  # llama.cpp's LLAMA_MAX_SEQ is 256; more slots than this only splits a CPU's bandwidth thinner


def nfc(text: str) -> str:
    # Qwen's tokenizer.json normalizes NFC, llama.cpp's BPE does not: normalize before tokenizing
    return unicodedata.normalize("NFC", text)


@dataclass
class _Slot:
    seq: int
    cache: list[int] = field(default_factory=list)  # exactly the tokens of this sequence in the KV cache
    prompt_len: int = 0  # how much of `cache` its last request's prompt was (slots.choose_slot reads it)
    job: Job | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens still to evaluate
    next: int | None = None  # sampled, not yet in the KV cache
    last_used: float = 0.0
    scales: Scales = ()  # the LoRA scales `cache` was computed under

    def active(self) -> Job:
        """The job of a busy slot (the engine asks only busy slots for it)."""
        assert self.job is not None, f"slot {self.seq} is idle"
        return self.job


def check_parallel(parallel: int) -> None:
    """The slot count an engine can have; `serve` asks before it binds its port, the engine again."""
    if not 1 <= parallel <= MAX_PARALLEL:
        raise ServeError(f"--parallel {parallel}: expected 1 to {MAX_PARALLEL}")


class Engine:
    """`parallel` generation slots over one llama.cpp context of `ctx` tokens, driven by one thread."""

    def __init__(
        self,
        model: str | Path,
        *,
        ctx: int = DEFAULT_CTX,
        parallel: int = 4,
        threads: int | None = None,
        queue_size: int = 64,
        batch: int = DEFAULT_BATCH,
        sampling: Mapping[str, Any] | None = None,
        slot_prompt_similarity: float = SLOT_PROMPT_SIMILARITY,
        cancelled: Callable[[], bool] | None = None,
        loras: Sequence[LoraFile] = (),
    ) -> None:
        import llama_cpp as lib

        check_parallel(parallel)
        check_similarity(slot_prompt_similarity)
        self.similarity = slot_prompt_similarity
        self.info = check_model(model, ctx=ctx)
        self.ctx, self.parallel, self.queue_size = ctx, parallel, queue_size
        self.threads, self.batch = threads or physical_cores(), min(batch, ctx)
        self._lib, self.model = lib, load_weights(model, cancelled=cancelled)  # `serve` stopped while loading
        try:
            self.adapters = Adapters(self.model.model, model, loras)  # GGUF LoRA adapters, checked against it
        except BaseException:
            self.model.close()
            raise
        self._vocab, self.n_vocab = self.model.vocab, self.model.n_vocab()
        self.metadata = self.model.metadata()
        self.template = ChatTemplate.from_metadata(self.metadata, self.token_text)
        self.sampling = model_sampling(self.info.sampling, sampling)  # what a request that sets nothing gets
        self.stop_tokens = frozenset(ids[0] for ids in map(self.tokenize, END_OF_TURN) if len(ids) == 1)
        self._ctx = self._new_context()
        self.lora_scales: Scales = tuple(f.scale for f in loras)  # what a request that sets none runs with
        self._applied: Scales = ()  # the scales set on the context (none: the base model)
        self._turns = Turns()
        self._use(self.lora_scales)
        self._mem = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(self.batch, 0, 1)
        self._buf = ctypes.create_string_buffer(256)
        self._slots = [_Slot(seq) for seq in range(parallel)]
        self._waiting: deque[Job] = deque()
        self._ids = itertools.count(1)
        self._cv = threading.Condition()
        self._stopping = self._exclusive = False
        self._counts = dict.fromkeys(("requests", "cancelled", "prompt", "cached", "predicted", "decode"), 0)
        self._seconds = {"prompt": 0.0, "predicted": 0.0}
        self._thread = threading.Thread(target=self._run, name="marco-gguf-engine", daemon=True)
        self._thread.start()

    def _new_context(self):
        lib = self._lib
        p = lib.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = self.ctx, self.batch, self.batch, self.parallel
        p.kv_unified = True  # one KV cache shared by the slots: any slot may take the whole context
        p.n_threads = p.n_threads_batch = self.threads
        with quiet_stderr():  # llama.cpp logs the context's construction to fd 2
            ctx = lib.llama_init_from_model(self.model.model, p)
        if not ctx:
            raise RequestError(
                f"llama.cpp could not create a context of {self.ctx:,} tokens x {self.parallel} slots",
                "lower --ctx or --parallel",
            )
        return ctx

    # tokens <-> text
    def tokenize(self, text: str) -> list[int]:
        """Tokens of `text` (NFC-normalized as Qwen's tokenizer.json does; special tokens parsed)."""
        return self.model.tokenize(nfc(text).encode("utf-8"), add_bos=False, special=True)

    def token_text(self, token: int) -> str:
        return (self._lib.llama_vocab_get_text(self._vocab, token) or b"").decode("utf-8", "replace")

    def _piece(self, token: int) -> bytes:
        n = self._lib.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
        if n < 0:
            self._buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
        return self._buf.raw[:n]

    # requests
    def submit(
        self,
        prompt: list[int],
        *,
        max_tokens: int | None = None,
        sampling: Sampling | None = None,
        stop: Sequence[str] = (),
        sink: Callable[[str | Result], object] | None = None,
        lora: Sequence[float] | None = None,
    ) -> Job:
        """Queue a request (`lora`: a scale per adapter, default `lora_scales` now); RequestError if it cannot
        fit the context or its grammar is invalid, ServerBusyError if the queue is full or the engine is stopping."""
        scales = self.lora_scales if lora is None else check_scales(lora, len(self.adapters.files))
        if not prompt:
            raise RequestError("the prompt is empty", param="prompt")
        if len(prompt) >= self.ctx:
            raise RequestError(
                f"the prompt is {len(prompt):,} tokens, the context holds {self.ctx:,} (--ctx)",
                "shorten the prompt or start the server with a larger --ctx",
                param="messages",
            )
        room = self.ctx - len(prompt)
        max_tokens = room if max_tokens is None else min(max_tokens, room)
        sampler = self._sampler(sampling or self.sampling)
        job = Job(next(self._ids), list(prompt), max_tokens, stop, sampler, sink, self._wake, scales)
        with self._cv:
            if self._stopping or self._exclusive or len(self._waiting) >= self.queue_size:
                self._lib.llama_sampler_free(sampler)
                raise ServerBusyError(
                    "the server is stopping"
                    if self._stopping
                    else "the engine is lent out for direct use (bench)"
                    if self._exclusive
                    else f"the queue is full ({self.queue_size} requests waiting)",
                    "retry later",
                )
            self._waiting.append(job)
            self._counts["requests"] += 1
            self._cv.notify()
        return job

    def set_lora_scales(self, scales: Sequence[float]) -> None:
        """The scales later requests that set none run with (POST /lora-adapters); running ones keep theirs."""
        self.lora_scales = check_scales(scales, len(self.adapters.files))

    def _use(self, scales: Scales) -> None:
        if scales != self._applied:
            self.adapters.apply(self._ctx, scales)
            self._applied = scales

    def _sampler(self, s: Sampling):
        lib = self._lib
        grammar = None
        if s.grammar is not None:
            grammar = lib.llama_sampler_init_grammar(self._vocab, s.grammar.encode("utf-8"), b"root")
            if not grammar:
                raise RequestError("the grammar for this request is not valid GBNF", param="response_format")
        return sampler_chain(
            self.n_vocab,
            temp=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            min_p=s.min_p,
            repeat_penalty=s.repeat_penalty,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            seed=s.seed,
            grammar=grammar,
        )

    def metrics(self) -> EngineMetrics:
        c, sec = self._counts, self._seconds
        return EngineMetrics(
            requests_total=c["requests"],
            requests_cancelled_total=c["cancelled"],
            prompt_tokens_total=c["prompt"],
            prompt_tokens_cached_total=c["cached"],
            prompt_seconds_total=sec["prompt"],
            tokens_predicted_total=c["predicted"],
            tokens_predicted_seconds_total=sec["predicted"],
            n_decode_total=c["decode"],
            busy_slots=sum(s.job is not None for s in self._slots),
            slots=self.parallel,
            queued=len(self._waiting),
            queue_size=self.queue_size,
            kv_cache_tokens=sum(len(s.cache) for s in self._slots),
            slot_cache_tokens=tuple(len(s.cache) for s in self._slots),
            kv_cache_size=self.ctx,
        )

    def slots(self) -> list[SlotState]:
        """Each slot now (GET /slots), read without the lock: a snapshot at most one step old."""
        states = []
        for s in self._slots:
            job = s.job
            states.append(
                SlotState(s.seq, len(s.cache))
                if job is None
                else SlotState(
                    s.seq, len(s.cache), job.id, len(job.prompt), job.cached, len(job.tokens), job.max_tokens
                )
            )
        return states

    def kv_tokens(self, slot: int = 0) -> int:
        """Tokens the KV cache holds for `slot` (its sequence)."""
        return len(self._slots[slot].cache)

    @contextlib.contextmanager
    def exclusive(self, threads: int | None = None) -> Iterator[Direct]:
        """The engine's llama.cpp context for direct use while no request runs (bench's timing loops, which
        time llama_decode alone as llama-bench does): requests are refused meanwhile, and the KV cache the
        slots knew is dropped on both sides, since direct use changes it behind their backs."""
        with self._cv:
            if self._stopping or self._waiting or any(s.job for s in self._slots):
                raise ServerBusyError("the engine is busy with requests", "wait for them to end")
            self._exclusive = True
        try:
            self._forget()
            self._use(self.lora_scales)
            self._set_threads(threads or self.threads)
            yield Direct(self._ctx, self.batch, self.n_vocab)
        finally:
            self._set_threads(self.threads)
            self._forget()
            with self._cv:
                self._exclusive = False

    def _set_threads(self, n: int) -> None:
        with quiet_stderr():  # llama.cpp logs the change to fd 2
            self._lib.llama_set_n_threads(self._ctx, n, n)

    def _forget(self) -> None:
        self._lib.llama_memory_clear(self._mem, False)
        for slot in self._slots:
            slot.cache = []

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    # the step loop (engine thread)
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and not any(s.job for s in self._slots):
                    self._cv.wait()
                if self._stopping:
                    break
                self._admit()
            self._step()
        for slot in self._slots:  # shutdown: every request ends with a final result
            if slot.job:
                self._finish(slot, "length")
        with self._cv:
            waiting, self._waiting = list(self._waiting), deque()
        for job in waiting:
            self._finish(_Slot(-1, job=job), "length")

    def _admit(self) -> None:
        """Waiting requests (first come, first served) into free slots, each to the one `choose_slot` picks."""
        for job in [j for j in self._waiting if j.cancelled]:  # gone before a slot was free
            self._waiting.remove(job)
            self._finish(_Slot(-1, job=job), "cancelled")
        while self._waiting:
            free = [s for s in self._slots if s.job is None]
            if not free:
                return
            job = self._waiting.popleft()
            slot = choose_slot(free, job.prompt, self.similarity, made_for(job))
            same = made_for(job)(slot)  # a cache made under other LoRA scales is of no use
            keep = min(common_prefix(slot.cache, job.prompt) if same else 0, len(job.prompt) - 1)  # last: logits
            if not self._lib.llama_memory_seq_rm(self._mem, slot.seq, keep, -1):
                self._lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
                keep = 0
            slot.cache, slot.pending, slot.job, slot.next = slot.cache[:keep], job.prompt[keep:], job, None
            slot.prompt_len, slot.scales = len(job.prompt), job.scales
            job.cached, job.admitted = keep, time.perf_counter()

    def _step(self) -> None:
        for slot in self._slots:
            if slot.job and slot.job.cancelled:
                self._finish(slot, "cancelled")
        self._make_room()
        scales = self._turns.pick(s.job for s in self._slots if s.job)
        rows = self._fill_batch(scales)
        if not rows:
            return
        self._use(rows[0][0].scales)
        lib = self._lib
        if lib.llama_decode(self._ctx, self._batch) != 0:
            for slot, _, _ in rows:
                lib.llama_memory_seq_rm(self._mem, slot.seq, len(slot.cache), -1)
                slot.pending = []
                self._finish(slot, "error", f"llama.cpp could not evaluate a batch of {self._batch.n_tokens} tokens")
            return
        self._counts["decode"] += 1
        for slot, tokens, output in rows:
            slot.cache += tokens
            # a request cancelled while the batch was decoding (Ctrl-C in chat) gets no token after it
            if output is not None and not slot.active().cancelled:
                self._on_token(slot, lib.llama_sampler_sample(slot.active().sampler, self._ctx, output))

    def _make_room(self) -> None:
        """Keep the KV cache within `ctx`: drop idle slots' caches (least recently used first), then end the
        generating request with the longest cache."""

        def need() -> int:
            return sum(len(s.cache) for s in self._slots) + sum(
                1 if s.next is not None else min(len(s.pending), self.batch) for s in self._slots if s.job
            )

        idle = sorted((s for s in self._slots if s.job is None and s.cache), key=lambda s: s.last_used)
        while need() > self.ctx and idle:
            slot = idle.pop(0)
            self._lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            slot.cache = []
        while need() > self.ctx:
            self._finish(max((s for s in self._slots if s.job), key=lambda s: len(s.cache)), "length")

    def _fill_batch(self, scales: Scales | None) -> list[tuple[_Slot, list[int], int | None]]:
        """The next token of every generating slot running with LoRA `scales`, then their prompt chunks while
        room is left; returns (slot, tokens added, batch row whose logits to sample or None)."""
        b, rows, n = self._batch, [], 0

        def add(slot: _Slot, tokens: list[int], last_logits: bool) -> None:
            nonlocal n
            pos = len(slot.cache)
            for i, t in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = t, pos + i, 1, False
                b.seq_id[n][0] = slot.seq
                n += 1
            b.logits[n - 1] = last_logits
            rows.append((slot, tokens, n - 1 if last_logits else None))

        group = [s for s in self._slots if s.job and s.scales == scales]
        for slot in group:
            if slot.next is not None:
                add(slot, [slot.next], True)
        for slot in sorted((s for s in group if s.pending), key=lambda s: s.active().admitted):
            chunk = slot.pending[: self.batch - n]
            if not chunk:
                break
            slot.pending = slot.pending[len(chunk) :]
            add(slot, chunk, not slot.pending)
        b.n_tokens = n
        return rows

    def _on_token(self, slot: _Slot, token: int) -> None:
        job, now = slot.active(), time.perf_counter()
        if not job.first:
            job.first = now
        job.last, job.sampled = now, job.sampled + 1
        if token in self.stop_tokens or self._lib.llama_vocab_is_eog(self._vocab, token):
            return self._finish(slot, "stop")
        job.tokens.append(token)
        if job._add_text(job._utf8.decode(self._piece(token))):
            return self._finish(slot, "stop")
        if len(job.tokens) >= job.max_tokens or len(slot.cache) + 1 >= self.ctx:
            return self._finish(slot, "length")
        slot.next = token

    def _finish(self, slot: _Slot, reason: str, error: str | None = None) -> None:
        job, now = slot.active(), time.perf_counter()
        if not job._hit:
            job._add_text(job._utf8.decode(b"", final=True))
        job.stop = ()
        job._add_text("")  # send any text held back for a stop string that never came
        prompt_ms = ((job.first or now) - job.admitted) * 1000 if job.admitted else 0.0
        timings = Timings(
            cache_n=job.cached,
            prompt_n=len(job.prompt) - job.cached if job.admitted else 0,
            prompt_ms=prompt_ms,
            predicted_n=len(job.tokens),
            predicted_ms=(job.last - job.first) * 1000 if job.first else 0.0,
        )
        job.result = Result(
            text=job._text,
            tokens=tuple(job.tokens),
            finish_reason=reason,
            prompt_tokens=len(job.prompt),
            timings=timings,
            time_to_first_token_s=(job.first - job.submitted) if job.first else 0.0,
            error=error,
        )
        self._lib.llama_sampler_free(job.sampler)
        job.sampler = None
        c = self._counts
        c["cancelled"] += reason == "cancelled"
        c["prompt"] += timings.prompt_n
        c["cached"] += timings.cache_n
        c["predicted"] += timings.predicted_n
        self._seconds["prompt"] += timings.prompt_ms / 1000
        self._seconds["predicted"] += timings.predicted_ms / 1000
        slot.job, slot.next, slot.pending, slot.last_used = None, None, [], now
        job._emit(job.result)

    # lifetime
    def stop(self) -> None:
        """End every request (a final result with finish_reason length) and stop the engine thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join()

    def close(self) -> None:
        if self._ctx is None:
            return
        self.stop()
        self._lib.llama_batch_free(self._batch)
        with quiet_stderr():  # and its destruction
            self._lib.llama_free(self._ctx)
        self._ctx = None
        self.adapters.close()
        self.model.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
