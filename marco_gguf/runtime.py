"""Running a GGUF through llama-cpp-python, with throughput measured by llama.cpp's own counters."""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import GGUFFileError

END_OF_TURN = ("<|im_end|>", "<|endoftext|>")  # Marco's config says 151643, the chat format ends with 151645


@dataclass(frozen=True)
class GenerationStats:
    """One generation's measured figures (llama.cpp's perf counters, wall clock for first token)."""

    prompt_tokens: int
    prompt_tokens_per_s: float
    completion_tokens: int
    completion_tokens_per_s: float
    time_to_first_token_s: float
    stop_reason: str


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    # llama.cpp logs model loading straight to fd 2; keep the terminal clean unless debugging
    if os.environ.get("MARCO_GGUF_DEBUG"):
        yield
        return
    saved = os.dup(2)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def load_model(path: str | Path, *, n_ctx: int = 2048, threads: int | None = None, vocab_only: bool = False):
    """A llama_cpp.Llama for `path`, or a GGUFFileError with llama.cpp's reason hidden behind a clear line."""
    from llama_cpp import Llama

    path = Path(path)
    if not path.is_file():
        raise GGUFFileError(f"{path}: no such file")
    try:
        with _quiet_stderr():
            return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, vocab_only=vocab_only,
                         verbose=bool(os.environ.get("MARCO_GGUF_DEBUG")))
    except (ValueError, RuntimeError) as e:
        raise GGUFFileError(f"{path}: llama.cpp could not load it ({e})",
                            "set MARCO_GGUF_DEBUG=1 to see llama.cpp's log") from None


def generate(llm, prompt: str, *, max_tokens: int = 16, seed: int = 0) -> tuple[str, GenerationStats]:
    """Greedy-free sampling of up to `max_tokens` after `prompt` (special tokens parsed), with stats."""
    import llama_cpp

    llm.reset()
    llama_cpp.llama_perf_context_reset(llm.ctx)
    started, first, pieces, reason = time.perf_counter(), None, [], "length"
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, stream=True, seed=seed, stop=list(END_OF_TURN)):
        if first is None:
            first = time.perf_counter() - started
        choice = chunk["choices"][0]
        pieces.append(choice["text"])
        reason = choice.get("finish_reason") or reason
    perf = llama_cpp.llama_perf_context(llm.ctx)
    stats = GenerationStats(
        prompt_tokens=perf.n_p_eval, prompt_tokens_per_s=_rate(perf.n_p_eval, perf.t_p_eval_ms),
        completion_tokens=perf.n_eval, completion_tokens_per_s=_rate(perf.n_eval, perf.t_eval_ms),
        time_to_first_token_s=first or 0.0, stop_reason=reason)
    return "".join(pieces), stats


def _rate(n: int, ms: float) -> float:
    return n / (ms / 1000.0) if ms > 0 else 0.0
