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
from gguf import MODEL_TENSOR as T
from gguf import GGMLQuantizationType as Q

from marco_gguf.arch.qwen3moe import ARCH_NAME, LM_HEAD, PlannedTensor, gguf_name, lm_head_is_tied, plan_tensors
from marco_gguf.base.errors import MarcoGGUFError, VerifyError
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
    metadata_checked: int = 0  # keys compared with what the source implies
    load_tried: bool = True  # load_error None then means llama.cpp loaded it

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
            "metadata_checked": self.metadata_checked,
            "load_tried": self.load_tried,
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


def _metadata_mismatches(header: Header, ckpt: Checkpoint, planned: list[PlannedTensor]) -> tuple[list[str], int]:
    """The keys whose value differs from what the source implies, and how many keys were compared."""
    file_type = gguf.LlamaFileType(header.fields["general.file_type"])
    expected, _ = build_metadata(ckpt.folder, ckpt.config, planned, file_type=file_type, name=None)
    out, checked = [], 0
    for key, value in expected.items():
        if key.startswith("general."):
            continue  # names and card-derived fields legitimately follow --name
        checked += 1
        got, want = header.fields.get(key), value.value
        if isinstance(want, float) and isinstance(got, float) and math.isclose(want, got, rel_tol=1e-6):
            continue
        if got != (list(want) if isinstance(want, (list, tuple)) else want):
            out.append(f"{key}: file has {_short(got)}, source implies {_short(want)}")
    return out, checked


def _short(v: Any) -> str:
    """A value for a one-line message: long lists and texts (a chat template) summarised."""
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return f"[{len(v)} items]"
    if isinstance(v, str) and len(v) > 60:
        return f"{v[:40]!r}... ({len(v):,} characters)"
    return repr(v)


# what makes two files the same model: (what to call it, GGUF key under qwen3moe., MarcoConfig field)
SAME_MODEL = (
    ("layers", "block_count", "n_layers"),
    ("hidden size", "embedding_length", "hidden"),
    ("attention heads", "attention.head_count", "n_heads"),
    ("KV heads", "attention.head_count_kv", "n_kv_heads"),
    ("head size", "attention.key_length", "head_dim"),
    ("experts", "expert_count", "n_experts"),
    ("expert width", "expert_feed_forward_length", "expert_ff"),
)


def same_model(path: Path, header: Header, ckpt: Checkpoint) -> None:
    """Refuse, in one line, a file and a checkpoint of different models: every tensor would differ."""
    arch = header.fields.get("general.architecture")
    if arch != ARCH_NAME:
        raise VerifyError(f"{path}: architecture {arch!r} is not {ARCH_NAME}", "verify checks Marco (qwen3moe) GGUFs")
    c = ckpt.config
    vocab = next((t.shape[0] for t in header.tensors if t.name == gguf_name(T.TOKEN_EMBD)), None)
    pairs = [(what, header.fields.get(f"{ARCH_NAME}.{key}"), getattr(c, name)) for what, key, name in SAME_MODEL]
    diffs = [
        f"{what} {got} vs {want}" for what, got, want in [*pairs, ("vocabulary", vocab, c.vocab_size)] if got != want
    ]
    if diffs:
        pruned = any(k.startswith("marco.prune.") for k in header.fields)
        raise VerifyError(
            f"{path.name} and {ckpt.folder} are different models: {', '.join(diffs)} (file vs checkpoint)",
            "a pruned file keeps fewer experts: verify the file it was pruned from"
            if pruned
            else "give --source the checkpoint this file was converted from",
        )


def verify(
    path: str | Path, *, source: str | Path, load: bool = True, progress: Progress | None = None
) -> VerifyResult:
    """Check a GGUF against its source checkpoint: tensors, shapes, errors per type, metadata, loading."""
    started, path = time.perf_counter(), Path(path)
    header = read_header(path)
    stored = {t.name: t for t in header.tensors}
    with Checkpoint(Path(source)) as ckpt:
        same_model(path, header, ckpt)
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
                if s.shape != t.shape:  # in ggml's order (ne), as inspect prints shapes
                    shape_bad.append(f"{t.name}: file has ne {_ne(s.shape)}, source implies ne {_ne(t.shape)}")
                    continue
                err = _tensor_error(fd, s.offset, s.type, t, ckpt)
                checks.append(TensorCheck(t.name, s.type.name, t.shape, err, ERROR_BOUNDS.get(s.type, 1.0)))
                done += t.n_elements
                if progress:
                    progress(ProgressEvent(done, total, "parameters", t.name))
        finally:
            os.close(fd)
        meta_bad, meta_checked = _metadata_mismatches(header, ckpt, planned)
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
        metadata_checked=meta_checked,
        load_tried=load,
    )


def _ne(shape: tuple[int, ...]) -> list[int]:
    return list(reversed(shape))


def _try_load(path: Path) -> str | None:
    try:
        load_model(path, n_ctx=256, threads=1).close()
    except MarcoGGUFError as e:
        return e.message
    return None
