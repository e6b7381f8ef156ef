"""Loading a Marco GGUF into llama-cpp-python: checks before loading (architecture, RAM), then a quiet load.

Every load (`load_model`, `load_weights`, the graph observer's) takes its model parameters from `model_params`,
the one place that knows about llama.cpp's crashing AMX kernels."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from marco_gguf.base.errors import Cancelled, GGUFFileError, InsufficientMemoryError
from marco_gguf.base.machine import available_memory
from marco_gguf.gguf_io.info import GGUFInfo, read_info, require_qwen3moe


def check_model(path: str | Path, *, ctx: int, available: int | None = None) -> GGUFInfo:
    """Before loading: a readable qwen3moe GGUF whose weights + KV cache for `ctx` fit in available RAM."""
    info = read_info(path)
    require_qwen3moe(info)
    need, free = info.ram_needed(ctx), available if available is not None else available_memory()
    if free is not None and need["total"] > free:
        gib = lambda n: f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"  # noqa: E731
        raise InsufficientMemoryError(
            f"{info.path.name}: not enough RAM for --ctx {ctx}: needs about {gib(need['total'])} (weights "
            f"{gib(need['weights'])} + KV cache {gib(need['kv_cache'])} + compute {gib(need['compute'])}), "
            f"{gib(free)} available",
            "use a smaller --ctx or a smaller quantization, or close other programs",
        )
    return info


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
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


@functools.cache
def amx_kernels_built() -> bool:
    """True when the installed llama.cpp carries its AMX matrix kernels (built with -march=native on a CPU with AMX).

    Those kernels crash at their first tile instruction in this llama.cpp (SIGILL, seen on this project's
    Xeon build machine): the tile configuration is built on the stack and optimized away (ggml-org/llama.cpp
    pull request 26954). They are reached only through llama.cpp's extra weight buffer types."""
    import llama_cpp

    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


def model_params():
    """llama.cpp's default model parameters, with its extra weight buffer types off where they would reach the
    crashing AMX kernels: slower prompt processing than with AMX or repacked weights, but correct."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    if amx_kernels_built():
        params.use_extra_bufts = False
    return params


@contextlib.contextmanager
def without_extra_buffers() -> Iterator[None]:
    """Llama() builds its model params from llama_model_default_params(): hand it `model_params()` instead."""
    import llama_cpp.llama_cpp as c

    default = c.llama_model_default_params
    c.llama_model_default_params = model_params
    try:
        yield
    finally:
        c.llama_model_default_params = default


def load_model(
    path: str | Path,
    *,
    n_ctx: int = 2048,
    threads: int | None = None,
    vocab_only: bool = False,
    flash_attn: bool = False,
):
    """A llama_cpp.Llama for `path` (`threads` for prompt and generation alike), or a GGUFFileError.

    Its model parameters are `model_params()` (the AMX guard)."""
    from llama_cpp import Llama

    path = Path(path)
    require_qwen3moe(read_info(path))  # llama.cpp aborts the process on some damage: refuse it first
    try:
        with quiet_stderr(), without_extra_buffers():
            return Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                vocab_only=vocab_only,
                flash_attn=flash_attn,
                verbose=bool(os.environ.get("MARCO_GGUF_DEBUG")),
            )
    except (ValueError, RuntimeError) as e:
        raise GGUFFileError(
            f"{path}: llama.cpp could not load it ({e})", "set MARCO_GGUF_DEBUG=1 to see llama.cpp's log"
        ) from None


def load_weights(path: str | Path, *, cancelled: Callable[[], bool] | None = None):
    """The weights alone (a llama_cpp._internals.LlamaModel, no context), for an engine that builds its own
    multi-sequence context; the same quiet load and AMX guard as load_model. `cancelled` is asked before each
    tensor is read (llama.cpp's progress callback): when it says True the load stops there (Cancelled)."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    path = Path(path)
    require_qwen3moe(read_info(path))
    params, stopped = model_params(), []

    def go_on(_done: float, _data: object) -> bool:
        if cancelled is not None and cancelled():
            stopped.append(True)
        return not stopped

    if cancelled is not None:  # the ctypes structure keeps the callback object alive while `params` lives
        params.progress_callback = llama_cpp.llama_progress_callback(go_on)
    try:
        with quiet_stderr():
            return LlamaModel(path_model=str(path), params=params, verbose=bool(os.environ.get("MARCO_GGUF_DEBUG")))
    except (ValueError, RuntimeError) as e:
        if stopped:
            raise Cancelled(f"{path}: loading stopped") from None
        raise GGUFFileError(
            f"{path}: llama.cpp could not load it ({e})", "set MARCO_GGUF_DEBUG=1 to see llama.cpp's log"
        ) from None
