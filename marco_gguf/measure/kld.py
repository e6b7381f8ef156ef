"""llama-perplexity's per-token arithmetic and statistics, in NumPy (tools/perplexity/perplexity.cpp, vendored).

The reference model's distribution at each scored position is kept as llama-perplexity's
`--kl-divergence-base` file keeps it: log-probabilities within 16 nats of the most likely token,
on a 16-bit grid (2 floats, scale and offset, then one uint16 per token; llama.cpp's row layout).
The KL divergence counts the tokens whose reference log-probability is above -16, as llama.cpp
does, so the figures are the ones llama-perplexity prints. Element-wise math is float32 and sums
are float64, as in the C++; rows are processed in blocks so temporaries stay small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOG_PROB_RANGE = np.float32(16.0)  # nats kept below the top token (llama.cpp's log_softmax for the base file)
LEVELS = np.float32(65535.0)  # uint16 grid
BLOCK_ROWS = 16  # rows of logits per NumPy step: ~10 MB temporaries at a 151,936 vocabulary
# percentiles llama-perplexity prints, as fractions (KLD; the Δp list adds the quartiles)
KLD_PERCENTILES = (0.999, 0.99, 0.95, 0.90, 0.10, 0.05, 0.01, 0.001)
DP_PERCENTILES = (0.999, 0.99, 0.95, 0.90, 0.75, 0.25, 0.10, 0.05, 0.01, 0.001)


def row_width(n_vocab: int) -> int:
    """uint16 words per stored row: 4 for the two float32 header values, the vocabulary rounded up to even."""
    return 2 * ((n_vocab + 1) // 2) + 4


def _log_sum_exp(x: np.ndarray, mx: np.ndarray) -> np.ndarray:
    # expf on float32, summed in double, log cast back to float: the C++ order
    return np.log(np.exp(x - mx[:, None]).sum(axis=1, dtype=np.float64)).astype(np.float32)


def reference_rows(logits: np.ndarray, targets: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Quantize reference logits [rows, V] into `out` [rows, row_width(V)] uint16; return each target's NLL."""
    nll = np.empty(len(logits), dtype=np.float32)
    n_vocab = logits.shape[1]
    for s in range(0, len(logits), BLOCK_ROWS):
        x = logits[s : s + BLOCK_ROWS]
        mx, mn = x.max(axis=1), x.min(axis=1)
        mn = np.maximum(mn, mx - LOG_PROB_RANGE)
        lse = _log_sum_exp(x, mx)
        scale = (mx - mn) / LEVELS
        head = out[s : s + len(x), :4].view(np.float32)
        head[:, 0], head[:, 1] = scale, mn - mx - lse
        inv = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale != 0)
        q = np.rint(inv[:, None] * (x - mn[:, None])).astype(np.int64) & 0xFFFF  # nearest_int, as uint16
        q[x <= mn[:, None]] = 0
        out[s : s + len(x), 4 : 4 + n_vocab] = q
        nll[s : s + len(x)] = mx + lse - x[np.arange(len(x)), targets[s : s + len(x)]]
    return nll


@dataclass
class Sums:
    """Running sums over scored tokens (llama.cpp's kl_divergence_result, with the base NLL unquantized)."""

    count: int = 0
    nll: float = 0.0
    nll2: float = 0.0
    nll_ref: float = 0.0
    nll_ref2: float = 0.0
    nll_nll_ref: float = 0.0
    kld: float = 0.0
    kld2: float = 0.0
    dp: float = 0.0
    dp2: float = 0.0
    dp4: float = 0.0
    same_top: int = 0


def score_rows(
    logits: np.ndarray,
    ref: np.ndarray,
    nll_ref: np.ndarray,
    targets: np.ndarray,
    sums: Sums,
    kld_out: np.ndarray,
    dp_out: np.ndarray,
) -> None:
    """Per-token KL(ref || model), Δp = p(target) - p_ref(target) and top-1 agreement for logits [rows, V]."""
    n_vocab = logits.shape[1]
    for s in range(0, len(logits), BLOCK_ROWS):
        x, rows = logits[s : s + BLOCK_ROWS], slice(s, s + min(BLOCK_ROWS, len(logits) - s))
        q = ref[rows, 4 : 4 + n_vocab]
        head = ref[rows, :4].view(np.float32)
        mx = x.max(axis=1)
        lse_mx = mx + _log_sum_exp(x, mx)
        nll = lse_mx - x[np.arange(len(x)), targets[rows]]
        lp = head[:, :1] * q.astype(np.float32) + head[:, 1:2]
        terms = np.exp(lp) * (lp - x + lse_mx[:, None])
        kld = np.where(lp > -LOG_PROB_RANGE, terms, np.float32(0)).sum(axis=1, dtype=np.float64)
        dp = (np.exp(-nll) - np.exp(-nll_ref[rows])).astype(np.float64)
        nll64, ref64 = nll.astype(np.float64), nll_ref[rows].astype(np.float64)
        sums.count += len(x)
        sums.nll, sums.nll2 = sums.nll + nll64.sum(), sums.nll2 + (nll64 * nll64).sum()
        sums.nll_ref, sums.nll_ref2 = sums.nll_ref + ref64.sum(), sums.nll_ref2 + (ref64 * ref64).sum()
        sums.nll_nll_ref += (nll64 * ref64).sum()
        sums.kld, sums.kld2 = sums.kld + kld.sum(), sums.kld2 + (kld * kld).sum()
        sums.dp, sums.dp2, sums.dp4 = sums.dp + dp.sum(), sums.dp2 + (dp * dp).sum(), sums.dp4 + (dp**4).sum()
        sums.same_top += int((x.argmax(axis=1) == q.argmax(axis=1)).sum())
        kld_out[rows], dp_out[rows] = kld, dp


def mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
    """Mean and its standard error; llama.cpp reports no error for 10 values or fewer."""
    if count < 1:
        return 0.0, 0.0
    f = total / count
    var = total2 / count - f * f
    return f, (float(np.sqrt(var / (count - 1))) if var > 0 and count > 10 else 0.0)


def covariance(a: float, b: float, ab: float, count: int) -> float:
    """Covariance of the two means (llama.cpp: none below 10 values)."""
    return 0.0 if count < 10 else (ab / count - (a / count) * (b / count)) / (count - 1)


def percentile(values: np.ndarray, fraction: float) -> float:
    """llama.cpp's linear interpolation on sorted float32 values, its float arithmetic included."""
    if fraction <= 0:
        return float(values[0])
    if fraction >= 1:
        return float(values[-1])
    p = np.float32(fraction) * np.float32(len(values) - 1)
    ip = int(p)
    p = np.float32(p - np.float32(ip))
    return float((np.float32(1) - p) * values[ip] + p * values[min(ip + 1, len(values) - 1)])


def median(values: np.ndarray) -> float:
    n = len(values)
    return float(values[n // 2]) if n % 2 else float(np.float32(0.5) * (values[n // 2] + values[n // 2 - 1]))


def distribution(values: np.ndarray, fractions: tuple[float, ...]) -> dict[str, float]:
    """Maximum, the named percentiles, median and minimum of per-token values, as llama-perplexity lists them."""
    v = np.sort(values.astype(np.float32))
    out = {"max": float(v[-1])}
    out.update({f"{100 * f:g}": percentile(v, f) for f in fractions if f > 0.5})
    out["median"] = median(v)
    out.update({f"{100 * f:g}": percentile(v, f) for f in fractions if f < 0.5})
    out["min"] = float(v[0])
    return out
