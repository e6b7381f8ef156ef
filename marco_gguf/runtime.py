"""Running a GGUF through llama-cpp-python: a chat session that keeps its KV cache, with measured throughput.

`ChatSession` formats the conversation with the GGUF's own chat template, evaluates only the
tokens the KV cache does not already hold, and samples with llama.cpp's C sampler chain in a loop
of low-level `llama_decode` calls (the Python layer costs about one ctypes call per token, see
benchmarks/runtime_overhead.md). Rates are wall clock: what the person at the terminal gets.
"""

from __future__ import annotations

import codecs
import ctypes
import json
import threading
import time
import unicodedata
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from .chat_template import ChatTemplate
from .errors import ChatError
from .loader import check_model, load_model
from .machine import physical_cores
from .qwen3moe import DEFAULT_CTX, END_OF_TURN

PENALTY_LAST_N = 64  # llama.cpp's default window for --repeat-penalty
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
    stop_reason: str  # stop (end of turn), length (--max-tokens), context (--ctx full), interrupted
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
        return _rate(self.prompt_tokens, self.prompt_seconds)

    @property
    def completion_tokens_per_s(self) -> float:
        return _rate(self.generation_steps, self.generation_seconds)

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


def _rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


# --- chat ----------------------------------------------------------------------------------------


def sampler_chain(
    n_vocab: int,
    *,
    temp: float,
    top_p: float,
    top_k: int,
    min_p: float,
    repeat_penalty: float,
    seed: int | None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    grammar=None,
):
    """llama.cpp's C sampler chain (free it with llama_sampler_free): a grammar (an initialised
    llama_sampler_init_grammar, owned by the chain from here on) first so that only tokens it allows are
    candidates, penalties, then top-k first, which keeps the later stages cheap on a 151,936-token
    vocabulary, top-p, min-p, temperature, draw."""
    import llama_cpp as lib

    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    penalize = repeat_penalty != 1.0 or presence_penalty != 0.0 or frequency_penalty != 0.0
    stages = [
        grammar,
        lib.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, repeat_penalty, frequency_penalty, presence_penalty)
        if penalize
        else None,
    ]
    if temp <= 0:
        stages.append(lib.llama_sampler_init_greedy())
    else:
        stages += [
            lib.llama_sampler_init_top_k(top_k) if top_k > 0 else None,
            lib.llama_sampler_init_top_p(top_p, 1) if top_p < 1 else None,
            lib.llama_sampler_init_min_p(min_p, 1) if min_p > 0 else None,
            lib.llama_sampler_init_temp(temp),
            lib.llama_sampler_init_dist(seed if seed is not None else lib.LLAMA_DEFAULT_SEED),
        ]
    for stage in filter(None, stages):
        lib.llama_sampler_chain_add(chain, stage)
    return chain


def _nfc(text: str) -> str:
    # Qwen's tokenizer.json normalizes NFC, llama.cpp's BPE does not: normalize before tokenizing
    return unicodedata.normalize("NFC", text)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Reply:
    """One assistant turn. Iterate it for text as it is generated; then `text` and `stats` hold the result.
    `dropped_turns` (known before the first piece) counts old turns removed to fit the context."""

    def __init__(
        self, session: ChatSession, tokens: list[int], prompt_text: str, dropped_turns: int, sent: float
    ) -> None:
        self.dropped_turns, self.text, self.sent = dropped_turns, "", sent
        self._stats: GenerationStats | None = None
        self.prompt, self.tokens = tokens, list[int]()  # the prompt's tokens and, once generated, the reply's
        self.interrupt = session.interrupt  # stop after the current token (safe from a signal handler)
        self._pieces = session._generate(self, tokens, prompt_text)

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
    """A conversation with a Marco GGUF that reuses its KV cache from turn to turn."""

    def __init__(
        self,
        model: str | Path,
        *,
        system: str | None = None,
        ctx: int = DEFAULT_CTX,
        threads: int | None = None,
        temp: float = 0.7,
        top_p: float = 0.8,
        top_k: int = 20,
        min_p: float = 0.0,
        repeat_penalty: float = 1.0,
        seed: int | None = None,
        max_tokens: int = 2048,
    ) -> None:
        import llama_cpp

        self.info = check_model(model, ctx=ctx)
        self.ctx, self.max_tokens, self.threads = ctx, max_tokens, threads or physical_cores()
        self.llm = load_model(model, n_ctx=ctx, threads=self.threads)
        self._lib, self._vocab = llama_cpp, llama_cpp.llama_model_get_vocab(self.llm.model)
        self.template = ChatTemplate.from_metadata(self.llm.metadata, self.token_text)
        self.stop_tokens = frozenset(ids[0] for ids in map(self._tokenize, END_OF_TURN) if len(ids) == 1)
        self.system = _nfc(system) if system else None
        self.messages: list[dict] = []  # user/assistant turns; the system message is kept apart, never dropped
        self.totals = SessionStats()
        self._kv: list[int] = []  # exactly the tokens in the KV cache, in order
        self._seen: tuple[str, list[int]] = ("", [])  # last prompt + reply as text and as the tokens the model saw
        self._cancel = threading.Event()
        self._active: Reply | None = None  # the reply being generated, if any
        self._one = (llama_cpp.llama_token * 1)()
        self._buf = ctypes.create_string_buffer(256)
        self._sampler = sampler_chain(
            self.llm.n_vocab(),
            temp=temp,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            seed=seed,
        )

    # tokens <-> text
    def _tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _piece(self, token: int) -> bytes:
        n = self._lib.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
        if n < 0:
            self._buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
        return self._buf.raw[:n]

    def token_text(self, token: int) -> str:
        return (self._lib.llama_vocab_get_text(self._vocab, token) or b"").decode("utf-8", "replace")

    # the conversation
    def conversation(self) -> list[dict]:
        """All messages as the template sees them: the system message (if any) first."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    def prompt_tokens(self, messages: list[dict] | None = None) -> list[int]:
        """The canonical tokens of `messages` (default: this conversation) plus the generation prompt."""
        return self._tokenize(self.template.render(self.conversation() if messages is None else messages))

    def _prompt(self, messages: list[dict]) -> tuple[str, list[int]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        text = self.template.render(system + messages)
        seen_text, seen_tokens = self._seen
        if seen_text and text.startswith(seen_text):  # keep the reply tokens the model produced, add the rest
            return text, seen_tokens + self._tokenize(text[len(seen_text) :])
        return text, self._tokenize(text)

    def send(self, text: str) -> Reply:
        """Add a user message and return the Reply to iterate; old turns are dropped if the context is short."""
        sent = time.perf_counter()
        self._end_active()
        self._cancel.clear()  # from here on, interrupt() stops this reply
        messages, dropped = [*self.messages, {"role": "user", "content": _nfc(text)}], 0
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
        self.messages = messages
        self._active = Reply(self, tokens, prompt_text, dropped, sent)
        return self._active

    def _end_active(self) -> None:
        if self._active is not None:  # a reply left half-read ends here, kept and marked as interrupted
            self._active._pieces.close()
            self._active = None

    def interrupt(self) -> None:
        """Stop the reply in progress after the current token (safe to call from a signal handler)."""
        self._cancel.set()

    def _decode(self, tokens: list[int]) -> None:
        lib = self._lib
        arr = self._one if len(tokens) == 1 else (lib.llama_token * len(tokens))()
        arr[:] = tokens
        if lib.llama_decode(self.llm.ctx, lib.llama_batch_get_one(arr, len(tokens))) != 0:
            raise ChatError(f"llama.cpp failed to evaluate {len(tokens)} token(s) at position {len(self._kv)}")
        self._kv.extend(tokens)

    def _generate(self, reply: Reply, tokens: list[int], prompt_text: str) -> Generator[str, None, None]:
        lib, ctx = self._lib, self.llm.ctx
        keep = min(_common_prefix(self._kv, tokens), len(tokens) - 1)  # the last prompt token gives the logits
        if not lib.llama_memory_seq_rm(lib.llama_get_memory(ctx), 0, keep, -1):
            lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
            keep = 0
        del self._kv[keep:]
        out: list[int] = []
        pieces: list[str] = []
        reason, first, last, steps = "interrupted", None, None, 0
        started = time.perf_counter()
        prompt_done = started
        try:
            for i in range(keep, len(tokens), self.llm.n_batch):
                if self._cancel.is_set():
                    return
                self._decode(tokens[i : i + self.llm.n_batch])
            prompt_done = time.perf_counter()
            limit = min(self.max_tokens, self.ctx - len(tokens))
            lib.llama_sampler_reset(self._sampler)
            utf8 = codecs.getincrementaldecoder("utf-8")("replace")
            token = lib.llama_sampler_sample(self._sampler, ctx, -1)
            first = last = time.perf_counter()
            while True:
                if token in self.stop_tokens:
                    reason = "stop"
                    break
                out.append(token)
                piece = utf8.decode(self._piece(token))
                if piece:
                    pieces.append(piece)
                    yield piece
                if len(out) >= limit:
                    reason = "length" if limit == self.max_tokens else "context"
                    break
                if self._cancel.is_set():
                    break
                self._decode([token])
                token = lib.llama_sampler_sample(self._sampler, ctx, -1)
                last, steps = time.perf_counter(), steps + 1
            pieces.append(utf8.decode(b"", final=True))
        finally:  # also on Ctrl-C or an abandoned iteration: the partial reply is kept and marked
            reply.text, reply.tokens = "".join(pieces), out
            self.messages.append(
                {
                    "role": "assistant",
                    "content": reply.text,
                    **({"interrupted": True} if reason == "interrupted" else {}),
                }
            )
            self._seen = (prompt_text + reply.text, tokens + out)
            reply._stats = stats = GenerationStats(
                prompt_tokens=len(tokens) - keep,
                prompt_tokens_per_s=_rate(len(tokens) - keep, prompt_done - started),
                completion_tokens=len(out),
                completion_tokens_per_s=_rate(steps, (last or 0) - (first or 0)),
                time_to_first_token_s=(first - reply.sent) if first else 0.0,
                stop_reason=reason,
                cached_tokens=keep,
            )
            self.totals.add(stats, prompt_done - started, (last or 0) - (first or 0), steps, reply.dropped_turns)
            if self._active is reply:
                self._active = None

    @property
    def context_tokens(self) -> int:
        """Tokens the KV cache holds now (of `ctx`)."""
        return len(self._kv)

    # slash-command helpers
    def reset(self) -> None:
        """Forget the turns (the system message stays; its KV cache is reused)."""
        self._end_active()
        self.messages, self._seen = [], ("", [])

    def set_system(self, text: str | None) -> None:
        self._end_active()
        self.system, self._seen = (_nfc(text) if text else None), ("", [])

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
        self.messages = [{**m, "content": _nfc(m["content"])} for m in messages[1 if system is not None else 0 :]]
        return len(messages)

    def close(self) -> None:
        if self._sampler is not None:
            self._lib.llama_sampler_free(self._sampler)
            self._sampler = None
        self.llm.close()

    def __enter__(self) -> ChatSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
