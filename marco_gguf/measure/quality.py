"""`quality`: perplexity and KL divergence of quantized GGUFs against a reference, as llama-perplexity measures them.

The definitions are llama.cpp's (`llama-perplexity --kl-divergence-base REF`, then
`--kl-divergence -m FILE`; tools/perplexity/perplexity.cpp): the text (one trailing newline
dropped) is tokenized by REF's vocabulary with BOS if it adds one, cut into chunks of `n_ctx`
tokens (the remainder is dropped; at least 2 chunks), each chunk evaluated from an empty KV cache
with its first token replaced by BOS when the vocabulary adds one, and only the second half is
scored: the logits at positions n_ctx/2 .. n_ctx-2 predict the next token, n_ctx/2 - 1 tokens a
chunk. Reported: PPL ± standard error of both models, ln(PPL(FILE)/PPL(REF)) with the errors'
correlation, mean KLD ± standard error with its median, percentiles and maximum, "same top p"
(top-1 agreement) and the RMS of Δp (change in the probability of the right token). Arithmetic
and statistics: marco_gguf.measure.kld.

Memory: one model at a time is loaded (weights + a KV cache of n_ctx + llama.cpp's logits buffer
of at most n_batch x vocabulary floats, 311 MB at 512 x 151,936) and NumPy temporaries of about
16 rows x vocabulary x 4 bytes (~40 MB at Marco's vocabulary). REF's distributions for all scored
tokens go to an unlinked temporary file, 2 bytes per vocabulary entry per scored token
(n_ctx=512: 77 MB a chunk), as llama-perplexity's base file does; per-token KLD and Δp stay in
RAM (8 bytes a token).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from marco_gguf.base.errors import QualityError
from marco_gguf.base.files import check_space
from marco_gguf.base.machine import physical_cores
from marco_gguf.base.progress import Progress, ProgressEvent
from marco_gguf.base.texts import read_text_file
from marco_gguf.gguf_io.info import read_info, require_qwen3moe
from marco_gguf.gguf_io.reader import read_header
from marco_gguf.llama.chunk_logits import ChunkModel
from marco_gguf.llama.loader import check_model
from marco_gguf.measure import kld as kld

FORMAT = "marco-gguf quality"  # `kind` of the JSON that `quality --json` writes and `card --quality` reads
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Estimate:
    value: float
    stderr: float


@dataclass(frozen=True)
class FileQuality:
    """One FILE against REF."""

    path: str
    size_bytes: int
    bits_per_weight: float
    ppl: Estimate
    ln_ppl_ratio: Estimate  # ln(PPL(FILE)/PPL(REF)), error with the correlation of the two
    ppl_correlation: float  # Cor(ln PPL(FILE), ln PPL(REF)) of the per-token NLLs' means
    kld: Estimate
    kld_distribution: dict  # max, 99.9 ... 0.1 percentiles, median, min
    same_top_p: Estimate  # fraction of scored positions where both models' most likely token agree
    rms_dp: Estimate  # RMS of p(FILE, right token) - p(REF, right token)
    mean_dp: Estimate
    dp_distribution: dict
    seconds: float

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class QualityReport:
    ref: str
    ref_size_bytes: int
    ref_bits_per_weight: float
    ref_ppl: Estimate
    text: str
    text_sha256: str
    text_tokens: int
    n_ctx: int
    chunks: int
    scored_tokens: int
    results: tuple[FileQuality, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": FORMAT, "format": FORMAT_VERSION, **asdict(self)}


def _check_files(ref: Path, files: Sequence[Path], n_ctx: int) -> None:
    """Both are qwen3moe GGUFs that fit in RAM one at a time, with the same vocabulary as REF."""
    for f in (ref, *files):
        require_qwen3moe(check_model(f, ctx=n_ctx))
    want = read_header(ref).fields
    for f in files:
        got = read_header(f).fields
        for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens"):
            a, b = want.get(key), got.get(key)
            if a == b:
                continue
            if key.endswith("tokens") and isinstance(a, list) and isinstance(b, list):
                i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                what = (
                    f"{len(b):,} tokens vs {len(a):,}"
                    if i == min(len(a), len(b))
                    else f"token {i} is {b[i]!r}, {ref.name} has {a[i]!r}"
                )
            else:
                what = f"{key} is {b!r}, {ref.name} has {a!r}"
            raise QualityError(
                f"{f}: another vocabulary than {ref} ({what})", "compare quantizations of the same model"
            )


def _chunking(n_tokens: int, n_ctx: int, chunks: int | None, text: Path) -> int:
    if n_ctx < 4:
        raise QualityError(f"-c {n_ctx} is too small: each chunk scores its second half", "use -c 128 or more")
    if n_tokens < 2 * n_ctx:
        raise QualityError(
            f"{text}: {n_tokens:,} tokens, but -c {n_ctx} needs at least {2 * n_ctx:,} (2 chunks)",
            "use a longer text or a smaller -c",
        )
    return min(chunks, n_tokens // n_ctx) if chunks else n_tokens // n_ctx


def _reference_pass(model: ChunkModel, tokens: np.ndarray, n_chunks: int, store: np.ndarray, tick) -> np.ndarray:
    """Evaluate REF over every chunk: its quantized distributions into `store`, the targets' NLL returned."""
    n_ctx, first = model.n_ctx, model.n_ctx // 2
    per_chunk = n_ctx - 1 - first
    nll = np.empty(n_chunks * per_chunk, dtype=np.float32)
    for c in range(n_chunks):
        chunk, row = tokens[c * n_ctx : (c + 1) * n_ctx], c * per_chunk
        for logits in model.chunk_logits(chunk, first, n_ctx):  # llama.cpp's outputs, its last one unused
            n = min(len(logits), (c + 1) * per_chunk - row)
            logits = logits[:n]
            targets = chunk[first + 1 + row - c * per_chunk :][:n]
            nll[row : row + n] = kld.reference_rows(logits, targets, store[row : row + n])
            row += n
        tick()
    return nll


def _file_pass(
    model: ChunkModel, tokens: np.ndarray, n_chunks: int, store: np.ndarray, nll_ref: np.ndarray, tick
) -> tuple[kld.Sums, np.ndarray, np.ndarray]:
    n_ctx, first = model.n_ctx, model.n_ctx // 2
    per_chunk = n_ctx - 1 - first
    sums = kld.Sums()
    kld_values, dp_values = np.empty(len(nll_ref), np.float32), np.empty(len(nll_ref), np.float32)
    for c in range(n_chunks):
        chunk, row = tokens[c * n_ctx : (c + 1) * n_ctx], c * per_chunk
        for logits in model.chunk_logits(chunk, first, n_ctx):
            n = min(len(logits), (c + 1) * per_chunk - row)
            logits, rows = logits[:n], slice(row, row + n)
            targets = chunk[first + 1 + row - c * per_chunk :][:n]
            kld.score_rows(logits, store[rows], nll_ref[rows], targets, sums, kld_values[rows], dp_values[rows])
            row += n
        tick()
    return sums, kld_values, dp_values


def _summary(path: Path, sums: kld.Sums, kld_values: np.ndarray, dp_values: np.ndarray, seconds: float) -> FileQuality:
    n = sums.count
    lnp, sp = kld.mean_and_uncertainty(sums.nll, sums.nll2, n)
    lnr, sr = kld.mean_and_uncertainty(sums.nll_ref, sums.nll_ref2, n)
    cov = kld.covariance(sums.nll, sums.nll_ref, sums.nll_nll_ref, n)
    mse, smse = kld.mean_and_uncertainty(sums.dp2, sums.dp4, n)
    rms = float(np.sqrt(mse))
    top = sums.same_top / n
    info = read_info(path)
    return FileQuality(
        path=str(path),
        size_bytes=info.file_size,
        bits_per_weight=info.bits_per_weight,
        ppl=Estimate(float(np.exp(lnp)), float(np.exp(lnp)) * sp),
        ln_ppl_ratio=Estimate(lnp - lnr, float(np.sqrt(max(0.0, sp * sp + sr * sr - 2 * cov)))),
        ppl_correlation=cov / (sp * sr) if sp and sr else 0.0,
        kld=Estimate(*kld.mean_and_uncertainty(sums.kld, sums.kld2, n)),
        kld_distribution=kld.distribution(kld_values, kld.KLD_PERCENTILES),
        same_top_p=Estimate(top, float(np.sqrt(top * (1 - top) / (n - 1)))),
        rms_dp=Estimate(rms, 0.5 / rms * smse if rms else 0.0),
        mean_dp=Estimate(*kld.mean_and_uncertainty(sums.dp, sums.dp2, n)),
        dp_distribution=kld.distribution(dp_values, kld.DP_PERCENTILES),
        seconds=seconds,
    )


def _scratch(rows: int, width: int) -> tuple[Any, np.ndarray]:
    """An unlinked temporary file (gone even if the process is killed) mapped as [rows, width] uint16."""
    need, folder = rows * width * 2, tempfile.gettempdir()
    check_space(
        Path(folder),
        need,
        target=folder,
        purpose=" for the reference's distributions",
        hint="use --chunks N, or set TMPDIR to a larger disk",
        error=QualityError,
    )
    f = tempfile.TemporaryFile(prefix="marco-gguf-quality-")  # noqa: SIM115 - the caller closes it (`with handle`)
    f.truncate(need)
    return f, np.memmap(f, dtype=np.uint16, mode="r+", shape=(rows, width))


def quality(
    files: str | Path | Sequence[str | Path],
    *,
    ref: str | Path,
    text: str | Path,
    n_ctx: int = 512,
    chunks: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> QualityReport:
    """Perplexity of REF and of each FILE, and each FILE's KL divergence from REF, over `text` (see the module doc)."""
    paths = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    ref, text, threads = Path(ref), Path(text), threads or physical_cores()
    data = read_text_file(text, QualityError).encode("utf-8")  # llama-perplexity tokenizes the bytes
    _check_files(ref, paths, n_ctx)
    with ChunkModel(ref, n_ctx=n_ctx, threads=threads) as model:
        tokens = model.tokenize(data)
        n_chunks = _chunking(len(tokens), n_ctx, chunks, text)
        per_chunk = n_ctx - 1 - n_ctx // 2
        handle, store = _scratch(n_chunks * per_chunk, kld.row_width(model.n_vocab))
        done, total, started = [0], n_chunks * (1 + len(paths)), time.perf_counter()

        def ticker(what: str):
            def tick() -> None:
                done[0] += 1
                if progress:
                    rate = done[0] * n_ctx / max(1e-9, time.perf_counter() - started)
                    progress(ProgressEvent(done[0], total, "chunks", what, rate, "tokens/s"))

            return tick

        with handle:
            nll_ref = _reference_pass(model, tokens, n_chunks, store, ticker(ref.name))
            model.close()
            results = []
            for f in paths:
                start = time.perf_counter()
                with ChunkModel(f, n_ctx=n_ctx, threads=threads) as m:
                    scored = _file_pass(m, tokens, n_chunks, store, nll_ref, ticker(f.name))
                results.append(_summary(f, *scored, time.perf_counter() - start))
    n = len(nll_ref)
    lnr, sr = kld.mean_and_uncertainty(
        float(nll_ref.astype(np.float64).sum()), float((nll_ref.astype(np.float64) ** 2).sum()), n
    )
    info = read_info(ref)
    return QualityReport(
        str(ref),
        info.file_size,
        info.bits_per_weight,
        Estimate(float(np.exp(lnr)), float(np.exp(lnr)) * sr),
        str(text),
        hashlib.sha256(data).hexdigest(),
        len(tokens),
        n_ctx,
        n_chunks,
        n,
        tuple(results),
    )


def load_report(path: str | Path) -> QualityReport:
    """Read back what `quality --json` wrote (for `card --quality`)."""
    import json

    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise QualityError(f"{path}: cannot read it ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise QualityError(
            f"{path}: not a quality result (invalid JSON: {e})",
            "write one with: marco-gguf quality FILE --ref REF --text TEXT --json > q.json",
        ) from None
    if not isinstance(doc, dict) or doc.get("kind") != FORMAT or doc.get("format") != FORMAT_VERSION:
        raise QualityError(
            f"{path}: not a quality result of format {FORMAT_VERSION} (kind {FORMAT!r})",
            "write one with: marco-gguf quality FILE --ref REF --text TEXT --json > q.json",
        )
    try:
        est = lambda d: Estimate(float(d["value"]), float(d["stderr"]))  # noqa: E731
        results = tuple(
            FileQuality(
                **{**r, **{k: est(r[k]) for k in ("ppl", "ln_ppl_ratio", "kld", "same_top_p", "rms_dp", "mean_dp")}}
            )
            for r in doc["results"]
        )
        fields = {k: v for k, v in doc.items() if k not in ("kind", "format", "results", "ref_ppl")}
        return QualityReport(**fields, ref_ppl=est(doc["ref_ppl"]), results=results)
    except (KeyError, TypeError, ValueError) as e:
        raise QualityError(f"{path}: a quality result with a missing or malformed field ({e})") from None
