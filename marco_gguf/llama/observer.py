"""Watching llama.cpp's graph as it runs: ask for some tensors, get them as numpy arrays.

llama.cpp's backend scheduler calls `cb_eval(tensor, ask, user_data)` for every graph node: first
with ask=true ("do you want this one?"), then, for the nodes we said yes to, with ask=false once the
node is computed. `GraphObserver` wraps that callback; `ObservedModel` owns the raw llama.cpp model
and context it is installed in (all the ctypes work for this lives here, next to loader/runtime's).

Tensor fields are read through `struct ggml_tensor` (layout from the vendored ggml/include/ggml.h,
checked against `ggml_tensor_overhead()` on load) and data through `ggml_backend_tensor_get`, so
tensors in non-host buffers work too. Serves both `imatrix` (MUL_MAT_ID / MUL_MAT inputs) and `experts`
(the routing tensors `ffn_moe_topk-N`, `ffn_moe_weights_norm-N`, `ffn_moe_down-N`, by name: `layer_of`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marco_gguf.base.errors import GGUFFileError, MarcoGGUFError, Terminated, raise_terminated
from marco_gguf.base.progress import Progress, ProgressEvent
from marco_gguf.llama.ggml import library

GGML_MAX_DIMS, GGML_MAX_SRC, GGML_MAX_OP_PARAMS, GGML_MAX_NAME = 4, 10, 64, 64  # ggml.h
GGML_OBJECT_SIZE = 32  # sizeof(struct ggml_object) in ggml.c: offs, size, next, type + 4 bytes padding
# ggml_type -> numpy dtype for the tensors we copy out; source: enum ggml_type in ggml.h
NUMPY_DTYPES = {0: np.float32, 1: np.float16, 26: np.int32}


class _GGMLTensor(ctypes.Structure):
    """struct ggml_tensor, field for field (ggml/include/ggml.h)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = library()
    lib.ggml_op_name.restype, lib.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    lib.ggml_nbytes.restype, lib.ggml_nbytes.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    lib.ggml_tensor_overhead.restype, lib.ggml_tensor_overhead.argtypes = ctypes.c_size_t, []
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    lib.ggml_backend_tensor_set.restype = None
    lib.ggml_backend_tensor_set.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    if lib.ggml_tensor_overhead() != GGML_OBJECT_SIZE + ctypes.sizeof(_GGMLTensor):
        raise MarcoGGUFError(
            "this llama.cpp build's struct ggml_tensor differs from marco-gguf's copy",
            "use the llama-cpp-python version marco-gguf was tested with",
        )
    return lib


def layer_of(name: str, prefix: str) -> int | None:
    """`ffn_moe_topk-3` -> 3 for prefix `ffn_moe_topk`, None for any other name. llama.cpp names a layer's
    graph tensors `<name>-<layer>` (llama_context::graph_get_cb)."""
    head, sep, tail = name.rpartition("-")
    return int(tail) if sep and head == prefix and tail.isdigit() else None


@functools.cache
def op_name(op: int) -> str:
    return _lib().ggml_op_name(op).decode()


class Node:
    """A graph tensor as the callback sees it; valid only during the callback."""

    __slots__ = ("_t", "ptr")

    def __init__(self, ptr: int) -> None:
        self.ptr, self._t = ptr, _GGMLTensor.from_address(ptr)

    @property
    def name(self) -> str:
        return self._t.name.decode(errors="replace")

    @property
    def op(self) -> str:
        return op_name(self._t.op)

    @property
    def type(self) -> int:
        return self._t.type

    @property
    def ne(self) -> tuple[int, ...]:
        return tuple(self._t.ne)

    @property
    def nb(self) -> tuple[int, ...]:
        return tuple(self._t.nb)

    def src(self, i: int) -> Node | None:
        p = self._t.src[i]
        return Node(p) if p else None

    def arg(self, i: int) -> Node:
        """Operand i of an op that always has it (a matrix product's weights, input, routing ids)."""
        node = self.src(i)
        assert node is not None, f"{self.name}: no operand {i}"
        return node

    def numpy(self) -> np.ndarray:
        """A copy of the data in numpy order (ne reversed), strides honoured (views are often not contiguous)."""
        dtype = NUMPY_DTYPES.get(self.type)
        if dtype is None:
            raise MarcoGGUFError(f"graph tensor {self.name}: ggml type {self.type} has no numpy equivalent here")
        lib = _lib()
        raw = np.empty(lib.ggml_nbytes(self.ptr), dtype=np.uint8)
        lib.ggml_backend_tensor_get(self.ptr, raw.ctypes.data, 0, raw.nbytes)
        shape, strides = tuple(reversed(self.ne)), tuple(reversed(self.nb))  # ggml_nbytes spans exactly these
        return np.lib.stride_tricks.as_strided(raw.view(dtype), shape=shape, strides=strides).copy()

    def write(self, values: np.ndarray) -> None:
        """Replace a computed, contiguous node's data (same dtype and shape as numpy() gives): the ops after it
        in the graph read the new values (the scheduler computes them only after the callback returns)."""
        lib, data = _lib(), np.ascontiguousarray(values, dtype=NUMPY_DTYPES.get(self.type))
        if data.nbytes != lib.ggml_nbytes(self.ptr) or data.shape != tuple(reversed(self.ne)):
            raise MarcoGGUFError(f"graph tensor {self.name}: {data.shape} values for a tensor of {self.ne}")
        lib.ggml_backend_tensor_set(self.ptr, data.ctypes.data, 0, data.nbytes)


@dataclass
class GraphObserver:
    """`wants(node)` decides at ask time; `take(node)` gets each wanted node once it is computed.

    An exception inside the callback stops the graph; `reraise()` raises it in the caller after llama.cpp has
    returned. Ctrl-C while llama.cpp runs sets `interrupted` instead (see `deferred_sigint`): the graph stops
    after the node being computed and the caller raises KeyboardInterrupt."""

    wants: Callable[[Node], bool]
    take: Callable[[Node], None]
    error: BaseException | None = None
    interrupted: bool = False

    def __post_init__(self) -> None:
        import llama_cpp

        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._call)

    def _call(self, ptr: int, ask: bool, _user: int) -> bool:
        if self.interrupted:  # ask for the next node, then refuse it when computed: the scheduler stops there
            return ask
        if self.error is not None:
            return False
        try:
            node = Node(ptr)
            if ask:
                return bool(self.wants(node))
            self.take(node)
            return True
        except BaseException as e:
            self.error = e
            return False

    def reraise(self) -> None:
        if self.error is not None:
            e, self.error = self.error, None
            raise e


@contextlib.contextmanager
def deferred_sigint(observer: GraphObserver):
    """Ctrl-C (and SIGTERM, where the CLI raises it) during a llama.cpp call as a flag, raised as KeyboardInterrupt
    (Terminated) once llama.cpp has returned.

    Python's own SIGINT handler raises at the first bytecode the callback runs, which can be the `def` line,
    before `_call`'s try: ctypes then prints "Exception ignored" and drops it, and the run goes on. A handler
    that only sets a flag cannot raise anywhere. Left alone: other threads (signals go to the main one) and a
    handler someone else installed."""
    ours = {
        signal.SIGINT: (signal.default_int_handler, KeyboardInterrupt),
        signal.SIGTERM: (raise_terminated, Terminated),
    }
    raising = {sig: exc for sig, (handler, exc) in ours.items() if signal.getsignal(sig) is handler}
    if threading.current_thread() is not threading.main_thread() or not raising:
        yield
        return
    observer.interrupted, caught = False, []

    def flag(sig: int, _frame: object) -> None:
        observer.interrupted = True
        caught.append(raising[signal.Signals(sig)])

    previous = {sig: signal.signal(sig, flag) for sig in raising}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if observer.interrupted:
        observer.interrupted = False
        raise caught[0]


class ObservedModel:
    """A GGUF loaded through llama.cpp's C API with an observer on its graph; `decode()` runs one sequence."""

    def __init__(
        self, path: str | Path, observer: GraphObserver, *, n_ctx: int, threads: int | None = None, kv_f32: bool = False
    ) -> None:
        import llama_cpp as lib

        from marco_gguf.llama.loader import model_params, quiet_stderr

        self.lib, self.observer, self.n_ctx = lib, observer, n_ctx
        mparams = model_params()
        with quiet_stderr():
            lib.llama_backend_init()
            self.model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise GGUFFileError(f"{path}: llama.cpp could not load it", "set MARCO_GGUF_DEBUG=1 to see llama.cpp's log")
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx  # one chunk = one micro-batch
        cparams.n_seq_max = 1
        if threads:
            cparams.n_threads = cparams.n_threads_batch = threads
        if kv_f32:  # exact comparisons against float32 references; llama.cpp's default cache is F16
            cparams.type_k = cparams.type_v = 0  # GGML_TYPE_F32
            # and no flash attention: build_attn_mha (src/llama-graph.cpp) casts F32 K and V to F16 for it
            cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.cb_eval, cparams.cb_eval_user_data = observer.callback, None
        with quiet_stderr():
            self.ctx = lib.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            self.close()
            raise GGUFFileError(f"{path}: llama.cpp could not create a context of {n_ctx} tokens")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self._batch = lib.llama_batch_init(n_ctx, 0, 1)

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's tokenization with special tokens added as the model says (common_tokenize, no parsing
        of special-token text)."""
        data = text.encode("utf-8")
        n = len(data) + 2
        while True:
            buf = (self.lib.llama_token * n)()
            got = self.lib.llama_tokenize(self.vocab, data, len(data), buf, n, True, False)
            if got >= 0:
                return list(buf[:got])
            n = -got

    @property
    def add_bos(self) -> bool:
        return bool(self.lib.llama_vocab_get_add_bos(self.vocab))

    @property
    def bos(self) -> int:
        return int(self.lib.llama_vocab_bos(self.vocab))

    def decode(self, tokens: Sequence[int]) -> None:
        """Evaluate one sequence from an empty KV cache, with logits requested for every token."""
        lib, b = self.lib, self._batch
        lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        for i, tok in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, i, 1, 1
            b.seq_id[i][0] = 0
        b.n_tokens = len(tokens)
        with deferred_sigint(self.observer):
            rc = lib.llama_decode(self.ctx, b)
        self.observer.reraise()
        if rc != 0:
            raise MarcoGGUFError(f"llama.cpp failed to evaluate {len(tokens)} tokens (llama_decode returned {rc})")

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Evaluate one sequence (as decode) and return every token's logits, float32 (tokens, vocabulary)."""
        self.decode(tokens)
        n_vocab = self.lib.llama_vocab_n_tokens(self.vocab)
        return np.ctypeslib.as_array(self.lib.llama_get_logits(self.ctx), shape=(len(tokens), n_vocab)).copy()

    def run_chunks(
        self,
        chunks: Sequence[Sequence[int]],
        progress: Progress | None = None,
        before: Callable[[int], None] | None = None,
        what: str = "",
    ) -> float:
        """Decode each chunk from an empty KV cache (`before(i)` first), reporting chunks with the running
        tokens/s as imatrix and experts both do; returns the seconds spent."""
        started, n_tokens = time.perf_counter(), 0
        for i, chunk in enumerate(chunks):
            if before is not None:
                before(i)
            self.decode(chunk)
            n_tokens += len(chunk)
            if progress is not None:
                rate = n_tokens / max(1e-9, time.perf_counter() - started)
                progress(ProgressEvent(i + 1, len(chunks), "chunks", what, rate, "tokens/s"))
        return time.perf_counter() - started

    def close(self) -> None:
        from marco_gguf.llama.loader import quiet_stderr

        with quiet_stderr():  # llama.cpp logs its buffer sizes when a context is freed
            self._free()

    def _free(self) -> None:
        lib = self.lib
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "ctx", None):
            lib.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            lib.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> ObservedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
