"""`verify()`: a GGUF against the checkpoint it came from, tensor by tensor, in bounded memory.

Each tensor is dequantized with gguf-py's own NumPy dequantizers (an implementation independent of
the C quantizer that wrote it) piece by piece, read with pread like the converter reads, and its
relative RMS error against the source is compared with a per-type bound.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from marco_gguf.arch.qwen3moe import LM_HEAD, PlannedTensor, lm_head_is_tied, plan_tensors
from marco_gguf.base.errors import MarcoGGUFError
from marco_gguf.base.progress import Progress, ProgressEvent
from marco_gguf.convert import row_blocks
from marco_gguf.gguf_io.format import row_size
from marco_gguf.gguf_io.metadata import build_metadata
from marco_gguf.gguf_io.reader import Header, read_header
from marco_gguf.hf.checkpoint import Checkpoint
from marco_gguf.llama.loader import load_model

# relative RMS error bound per type: about twice what ggml's quantizers give on Gaussian weights,
# measured here (F16 2e-4, BF16 1.7e-3, Q8_0 5.4e-3, Q6_K 1.8e-2, Q5_K 3.6e-2, Q4_K 7.1e-2, Q2_K 0.30)
ERROR_BOUNDS: Mapping[Q, float] = MappingProxyType(
    {
        Q.F32: 1e-6,
        Q.F16: 1e-3,
        Q.BF16: 5e-3,
        Q.Q8_0: 1.5e-2,
        Q.Q6_K: 4.5e-2,
        Q.Q5_K: 9e-2,
        Q.Q5_1: 9e-2,
        Q.Q5_0: 1.1e-1,
        Q.Q4_K: 1.7e-1,
        Q.Q4_1: 1.9e-1,
        Q.Q4_0: 2.3e-1,
        Q.Q3_K: 3.6e-1,
        Q.Q2_K: 6.8e-1,
    }
)


@dataclass(frozen=True)
class TensorCheck:
    name: str
    type: str
    shape: tuple[int, ...]
    rel_rms_error: float
    bound: float

    @property
    def ok(self) -> bool:
        return self.rel_rms_error <= self.bound


@dataclass(frozen=True)
class VerifyResult:
    """What verify found; `ok` is true only when every check held."""

    path: Path
    source: Path
    tensors: tuple[TensorCheck, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shape_mismatches: tuple[str, ...]
    metadata_mismatches: tuple[str, ...]
    load_error: str | None
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def flagged(self) -> tuple[TensorCheck, ...]:
        return tuple(t for t in self.tensors if not t.ok)

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.unexpected
            or self.shape_mismatches
            or self.metadata_mismatches
            or self.flagged
            or self.load_error
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "source": str(self.source),
            "ok": self.ok,
            "seconds": self.seconds,
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "shape_mismatches": list(self.shape_mismatches),
            "metadata_mismatches": list(self.metadata_mismatches),
            "load_error": self.load_error,
            "flagged": [t.name for t in self.flagged],
            "tensors": [
                {
                    "name": t.name,
                    "type": t.type,
                    "shape": list(t.shape),
                    "rel_rms_error": t.rel_rms_error,
                    "bound": t.bound,
                    "ok": t.ok,
                }
                for t in self.tensors
            ],
        }


def _tensor_error(fd: int, offset: int, qtype: Q, planned: PlannedTensor, ckpt: Checkpoint) -> float:
    """Relative RMS error of one stored tensor against its source rows, block by block."""
    row_bytes, err2, ref2, row = row_size(qtype, planned.row_len), 0.0, 0.0, 0
    for source, start, count in row_blocks(planned):
        raw = os.pread(fd, count * row_bytes, offset + row * row_bytes)
        stored = np.frombuffer(raw, dtype=np.uint8).reshape(count, row_bytes)
        deq = gguf.quants.dequantize(stored, qtype).reshape(count, planned.row_len).astype(np.float64)
        ref = ckpt.read_rows(source, start, count).astype(np.float64)
        err2 += float(np.square(deq - ref).sum())
        ref2 += float(np.square(ref).sum())
        row += count
    return math.sqrt(err2 / ref2) if ref2 > 0 else math.sqrt(err2)


def _metadata_mismatches(header: Header, ckpt: Checkpoint, planned: list[PlannedTensor]) -> list[str]:
    file_type = gguf.LlamaFileType(header.fields["general.file_type"])
    expected, _ = build_metadata(ckpt.folder, ckpt.config, planned, file_type=file_type, name=None)
    out = []
    for key, value in expected.items():
        if key.startswith("general."):
            continue  # names and card-derived fields legitimately follow --name
        got, want = header.fields.get(key), value.value
        if isinstance(want, float) and isinstance(got, float) and math.isclose(want, got, rel_tol=1e-6):
            continue
        if got != (list(want) if isinstance(want, (list, tuple)) else want):
            out.append(f"{key}: file has {_short(got)}, source implies {_short(want)}")
    return out


def _short(v: Any) -> str:
    return f"[{len(v)} items]" if isinstance(v, (list, tuple)) and len(v) > 8 else repr(v)


def verify(
    path: str | Path, *, source: str | Path, load: bool = True, progress: Progress | None = None
) -> VerifyResult:
    """Check a GGUF against its source checkpoint: tensors, shapes, errors per type, metadata, loading."""
    started, path = time.perf_counter(), Path(path)
    header = read_header(path)
    stored = {t.name: t for t in header.tensors}
    with Checkpoint(Path(source)) as ckpt:
        untied = LM_HEAD in ckpt.tensors and not lm_head_is_tied(ckpt.read_rows, ckpt.tensors)
        planned = plan_tensors(ckpt.config, ckpt.tensors, keep_lm_head=untied)
        missing = tuple(t.name for t in planned if t.name not in stored)
        unexpected = tuple(sorted(set(stored) - {t.name for t in planned}))
        checks, shape_bad = [], []
        total, done = sum(t.n_elements for t in planned), 0
        fd = os.open(path, os.O_RDONLY)
        try:
            for t in planned:
                s = stored.get(t.name)
                if s is None:
                    continue
                if s.shape != t.shape:
                    shape_bad.append(f"{t.name}: file has {list(s.shape)}, source implies {list(t.shape)}")
                    continue
                err = _tensor_error(fd, s.offset, s.type, t, ckpt)
                checks.append(TensorCheck(t.name, s.type.name, t.shape, err, ERROR_BOUNDS.get(s.type, 1.0)))
                done += t.n_elements
                if progress:
                    progress(ProgressEvent(done, total, "parameters", t.name))
        finally:
            os.close(fd)
        meta_bad = _metadata_mismatches(header, ckpt, planned)
    load_error = _try_load(path) if load else None
    return VerifyResult(
        path,
        Path(source),
        tuple(checks),
        missing,
        unexpected,
        tuple(shape_bad),
        tuple(meta_bad),
        load_error,
        time.perf_counter() - started,
    )


def _try_load(path: Path) -> str | None:
    try:
        load_model(path, n_ctx=256, threads=1).close()
    except MarcoGGUFError as e:
        return e.message
    return None
