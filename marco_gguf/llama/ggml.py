"""llama.cpp's own quantizers (`ggml_quantize_chunk` in libggml-base) through ctypes.

Every non-F32 type, F16 and BF16 included, goes through the same C function llama-quantize
uses, so our bytes equal llama.cpp's by construction; ctypes releases the GIL during the call,
which lets a thread pool use every core.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q

from marco_gguf.base.errors import QuantizerError
from marco_gguf.gguf_io.format import row_size

LIBRARY_NAMES = ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll")


def _library_path() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise QuantizerError(
            "llama-cpp-python is not installed", "pip install llama-cpp-python (marco-gguf depends on it)"
        )
    lib_dir = Path(next(iter(spec.submodule_search_locations))) / "lib"
    for name in LIBRARY_NAMES:
        if (lib_dir / name).exists():
            return lib_dir / name
    raise QuantizerError(f"{lib_dir}: no libggml-base shared library", "reinstall llama-cpp-python")


@functools.cache
def library() -> ctypes.CDLL:
    """libggml-base, loaded once, with the signatures of the functions we call declared."""
    try:
        lib = ctypes.CDLL(str(_library_path()))
    except OSError as e:
        raise QuantizerError(f"cannot load llama.cpp's quantizer library: {e}", "reinstall llama-cpp-python") from None
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    return lib


def prepare(qtype: Q) -> None:
    """Load the library and build its lookup tables once, before worker threads start."""
    if qtype == Q.F32:
        return
    library().ggml_quantize_init(int(qtype))


def quantize_rows(qtype: Q, rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Encode a C-contiguous float32 (n_rows, n_per_row) block as `qtype` bytes (uint8, 1-D), weighting each
    column's error by `imatrix` (float32, n_per_row) as llama-quantize does when one is given."""
    if rows.dtype != np.float32 or rows.ndim != 2:
        raise QuantizerError(f"quantize_rows needs a 2-D float32 block, got {rows.dtype} {rows.shape}")
    if qtype == Q.F32:
        return np.ascontiguousarray(rows).view(np.uint8).reshape(-1)
    rows = np.ascontiguousarray(rows)
    n_rows, n_per_row = rows.shape
    lib = library()
    if imatrix is None and lib.ggml_quantize_requires_imatrix(int(qtype)):  # ggml would abort the process
        raise QuantizerError(
            f"type {qtype.name} needs an importance matrix",
            "make one with `marco-gguf imatrix` and pass --imatrix, or use --calibrate",
        )
    if imatrix is not None and (imatrix.dtype != np.float32 or imatrix.shape != (n_per_row,)):
        raise QuantizerError(f"importance vector must be float32 ({n_per_row},), got {imatrix.dtype} {imatrix.shape}")
    weights = None if imatrix is None else np.ascontiguousarray(imatrix).ctypes.data
    out = np.empty(n_rows * row_size(qtype, n_per_row), dtype=np.uint8)
    written = lib.ggml_quantize_chunk(int(qtype), rows.ctypes.data, out.ctypes.data, 0, n_rows, n_per_row, weights)
    if written != out.nbytes:
        raise QuantizerError(f"ggml_quantize_chunk wrote {written} bytes for {qtype.name}, expected {out.nbytes}")
    return out
