"""llama-bench's two timed loops on the engine's context (lent out as `Direct`): raw llama_decode calls, timed.

Source: tools/llama-bench/llama-bench.cpp (test_prompt, test_gen), as vendored by llama-cpp-python 0.3.36.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from marco_gguf.llama.jobs import Direct


def _decode(lib, ctx, tokens: Sequence[int]) -> None:
    arr = (lib.llama_token * len(tokens))(*tokens)
    if lib.llama_decode(ctx, lib.llama_batch_get_one(arr, len(tokens))) != 0:
        raise RuntimeError("llama_decode failed")


def time_prompt(direct: Direct, tokens: Sequence[int]) -> float:
    """Seconds to evaluate `tokens` from an empty KV cache, n_batch at a time (llama-bench's test_prompt)."""
    import llama_cpp as lib

    lib.llama_memory_clear(lib.llama_get_memory(direct.ctx), False)
    started = time.perf_counter()
    for i in range(0, len(tokens), direct.n_batch):
        _decode(lib, direct.ctx, tokens[i : i + direct.n_batch])
    lib.llama_synchronize(direct.ctx)
    return time.perf_counter() - started


def time_generation(direct: Direct, tokens: Sequence[int], *, after: Sequence[int] = ()) -> float:
    """Seconds to evaluate `tokens` one llama_decode each from an empty KV cache (llama-bench's test_gen), or
    after `after` was evaluated untimed (llama-bench's --n-depth: generation deeper into a conversation)."""
    import llama_cpp as lib

    lib.llama_memory_clear(lib.llama_get_memory(direct.ctx), False)
    for i in range(0, len(after), direct.n_batch):
        _decode(lib, direct.ctx, after[i : i + direct.n_batch])
    ctx, one = direct.ctx, (lib.llama_token * 1)()
    decode, batch_get_one, synchronize = lib.llama_decode, lib.llama_batch_get_one, lib.llama_synchronize
    started = time.perf_counter()
    for token in tokens:
        one[0] = token
        if decode(ctx, batch_get_one(one, 1)) != 0:
            raise RuntimeError("llama_decode failed")
        synchronize(ctx)
    return time.perf_counter() - started
