"""What each candidate GGML type would cost each tensor: a weighted squared error measured on sampled rows.

The anchor is llama.cpp PR #15550 (`llama-quantize --target-bpw`): quantize a sample of each tensor's rows with
every candidate type through llama.cpp's own quantizer, decode it with ggml's own `to_float`, and sum the
squared difference, each input column weighted by the importance matrix. Rows are quantized independently
(block by block within a row), so a sampled row's bytes are exactly those it gets in the whole tensor and
the sum over a sample, scaled up, is an unbiased estimate of the whole tensor's error.

The objective is the expected squared error of the tensor's output for one token (ΔW x, with E[x_j^2] from
the imatrix): a dense tensor's column j weighs E[x_j^2] (the imatrix's sums / count); an expert stack's
expert e weighs its own E[x_j^2] times its routing share (the tokens routed to it per token of the layer:
count_e / (sum of counts / experts used)), so an expert no calibration token reached costs nothing.
Without an imatrix every column weighs 1 (plain squared error) and an expert its uniform share
(used / total). Tensors an imatrix never sees: the output matrix (or the tied embeddings serving as it)
weighs the final norm's gains squared, the expected square of its normalised input; untied embeddings
are a lookup of one row per token, so their error counts once per vocabulary row.

The sample is stratified: SAMPLE_ROWS rows per tensor, spread evenly over the experts of a stack, chosen
by a generator seeded from the tensor's name (deterministic, the same rows for every type, so the types
are compared on the same rows). benchmarks/plan_sample.py measures how the estimate varies with the
sample size and the seed; the chosen size is explained there and in BENCHMARKS.md.
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import MODEL_TENSOR as T
from gguf import GGMLQuantizationType as Q

from marco_gguf.arch.qwen3moe import PlannedTensor
from marco_gguf.base.progress import Progress, ProgressEvent
from marco_gguf.llama.ggml import dequantize_rows, prepare, quantize_rows
from marco_gguf.quant.importance import Importance, experts_of
from marco_gguf.quant.presets import ALWAYS_F32, NEEDS_IMATRIX

# the types llama.cpp's CPU backend runs and Ollama's engine loads, best first; IQ types only with an imatrix
CANDIDATES: tuple[Q, ...] = (
    Q.F16,
    Q.Q8_0,
    Q.Q6_K,
    Q.Q5_K,
    Q.Q5_1,
    Q.Q5_0,
    Q.Q4_K,
    Q.Q4_1,
    Q.Q4_0,
    Q.IQ4_XS,
    Q.IQ4_NL,
    Q.Q3_K,
    Q.IQ3_S,
    Q.IQ3_XXS,
    Q.Q2_K,
    Q.IQ2_S,
    Q.IQ2_XS,
    Q.IQ2_XXS,
)
ACCEPTED: tuple[Q, ...] = (*CANDIDATES, Q.BF16)  # what --types may name
SAMPLE_ROWS = 1024  # rows per tensor; benchmarks/plan_sample.py shows the estimate's spread at this size
SAMPLE_SEED = 0


def is_iq(q: Q) -> bool:
    return q.name.startswith("IQ")


def quantizable(t: PlannedTensor) -> bool:
    """llama.cpp quantizes every matrix except the router; norms and other vectors stay F32."""
    return len(t.shape) >= 2 and t.kind not in ALWAYS_F32


def fits(q: Q, row_len: int) -> bool:
    """A row must hold whole blocks (the types a preset's row-size fallbacks would pick remain candidates)."""
    return row_len % GGML_QUANT_SIZES[q][0] == 0


def candidate_types(t: PlannedTensor, types: Sequence[Q], *, importance: Importance | None) -> tuple[Q, ...]:
    """The types `t` may take: whole blocks per row; IQ types only with an imatrix, and the ones llama.cpp
    refuses to make without importance data only for tensors the imatrix has."""
    has_vector = importance is not None and importance.for_tensor(t.name) is not None
    return tuple(
        q
        for q in types
        if fits(q, t.row_len) and (importance is not None or not is_iq(q)) and (q not in NEEDS_IMATRIX or has_vector)
    )


@dataclass(frozen=True)
class Weights:
    """How one tensor's error is weighed: per stacked matrix (expert), column weights and a routing share."""

    quantize: np.ndarray | None  # float32 (n_mat * ne0): what ggml_quantize_chunk gets, as convert passes it
    columns: np.ndarray  # float64 (n_mat, ne0): E[x_j^2] per matrix, or 1
    share: np.ndarray  # float64 (n_mat,): how many times per token the matrix is used


def tensor_weights(
    t: PlannedTensor,
    importance: Importance | None,
    *,
    experts_used: int,
    tied: bool,
    final_norm: np.ndarray,
) -> Weights:
    n_mat, ne0 = experts_of(t), t.row_len
    vec = importance.for_tensor(t.name) if importance is not None else None
    share = np.ones(n_mat)
    if n_mat > 1:
        share[:] = experts_used / n_mat
        entry = importance.imatrix.entries.get(t.name) if importance is not None and vec is not None else None
        if entry is not None and not importance.imatrix.legacy and entry.counts.sum() > 0:  # type: ignore[union-attr]
            share = entry.counts.astype(np.float64) * experts_used / entry.counts.sum()
    if vec is not None:
        columns = vec.astype(np.float64).reshape(n_mat, ne0)
    elif importance is not None and (t.kind == T.OUTPUT or (t.kind == T.TOKEN_EMBD and tied)):
        columns = np.tile(final_norm.astype(np.float64) ** 2, (n_mat, 1))
    else:
        columns = np.ones((n_mat, ne0))
    if t.kind == T.TOKEN_EMBD and not tied:
        share = share / t.n_rows  # a lookup: one row per token
    return Weights(vec, columns, share)


@dataclass(frozen=True)
class Sample:
    """Sampled rows of one tensor: the rows (float32), each row's matrix and the scale to the whole tensor."""

    rows: np.ndarray
    matrix: np.ndarray  # int, per row
    scale: float  # rows per matrix / sampled rows per matrix


def sample_rows(t: PlannedTensor, n: int = SAMPLE_ROWS, seed: int = SAMPLE_SEED) -> list[int]:
    """Deterministic global row numbers: about n rows, the same number from every stacked matrix."""
    n_mat = experts_of(t)
    per_mat = t.n_rows // n_mat
    take = min(per_mat, max(1, math.ceil(n / n_mat)))
    rng = np.random.default_rng([seed, zlib.crc32(t.name.encode())])
    return [int(e * per_mat + r) for e in range(n_mat) for r in np.sort(rng.choice(per_mat, take, replace=False))]


def read_sample(t: PlannedTensor, rows: Sequence[int], read_rows: Callable[[str, int, int], np.ndarray]) -> Sample:
    """Read the sampled rows from the tensor's source pieces, one row at a time (positional reads)."""
    starts = np.cumsum([0] + [p.count for p in t.pieces])
    out = np.empty((len(rows), t.row_len), dtype=np.float32)
    for i, g in enumerate(rows):
        k = int(np.searchsorted(starts, g, side="right")) - 1
        out[i] = read_rows(t.pieces[k].source, t.pieces[k].start + g - int(starts[k]), 1)[0]
    per_mat = t.n_rows // experts_of(t)
    matrix = np.asarray(rows) // per_mat
    return Sample(out, matrix, per_mat / (len(rows) // experts_of(t)))


def weighted_error(q: Q, sample: Sample, w: Weights) -> float:
    """Estimated weighted squared error of the whole tensor when stored as `q`."""
    total, ne0 = 0.0, sample.rows.shape[1]
    for e in np.unique(sample.matrix):
        rows = sample.rows[sample.matrix == e]
        vec = None if w.quantize is None else w.quantize[e * ne0 : (e + 1) * ne0]
        decoded = dequantize_rows(q, quantize_rows(q, rows, vec), ne0)
        diff = (decoded - rows).astype(np.float64)
        total += w.share[e] * float(((diff * diff).sum(axis=0) * w.columns[e]).sum())
    return total * sample.scale


def measure(
    tensors: Sequence[tuple[PlannedTensor, Weights, tuple[Q, ...]]],
    read_rows: Callable[[str, int, int], np.ndarray],
    *,
    threads: int,
    known: Mapping[str, Mapping[str, float]] | None = None,
    sample_size: int = SAMPLE_ROWS,
    progress: Progress | None = None,
) -> dict[str, dict[str, float]]:
    """Errors per tensor and type, measuring only the (tensor, type) pairs `known` lacks. Streaming: the main
    thread reads one tensor's sample while a thread pool quantizes, at most 2 x threads jobs in flight."""
    known = known or {}
    todo = [(t, w, [q for q in types if q.name not in known.get(t.name, {})]) for t, w, types in tensors]
    total = sum(len(qs) for _, _, qs in todo)
    out = {t.name: dict(known.get(t.name, {})) for t, _, _ in tensors}
    for q in {q for _, _, qs in todo for q in qs}:
        prepare(q)
    pending: deque[tuple[str, Q, Future[float]]] = deque()
    done = 0

    def drain() -> None:
        nonlocal done
        name, q, fut = pending.popleft()
        out[name][q.name] = fut.result()
        done += 1
        if progress is not None:
            progress(ProgressEvent(done, total, "steps", f"{name} {q.name}"))

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="marco-measure") as pool:
        try:
            for t, w, qs in todo:
                if not qs:
                    continue
                sample = read_sample(t, sample_rows(t, sample_size), read_rows)
                for q in qs:
                    pending.append((t.name, q, pool.submit(weighted_error, q, sample, w)))
                    while len(pending) > 2 * threads:
                        drain()
            while pending:
                drain()
        except BaseException:
            for *_, fut in pending:
                fut.cancel()
            raise
    return out
