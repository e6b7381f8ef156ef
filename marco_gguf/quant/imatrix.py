"""`compute_imatrix()`: an importance matrix for a GGUF, with the semantics of llama.cpp's `llama-imatrix`.

Source: tools/imatrix/imatrix.cpp as vendored by llama-cpp-python 0.3.36. Through the graph observer,
for every MUL_MAT_ID (stacked experts) the squared input activations are summed per input column and
per expert, each (token, slot) routed through the ids tensor, with one count per routed token; for a
plain MUL_MAT only when it sees >= 16 tokens of F32 input and its weight is a `blk.*` tensor (so tied
`token_embd` used as the output is never collected). The text is tokenized with the model's special
tokens added, cut into chunks of `ctx` tokens, each evaluated from an empty KV cache with logits for
every token (so the last layer computes every row); with add_bos the first token of each chunk is BOS.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from marco_gguf.base.errors import ImatrixError, MarcoGGUFError
from marco_gguf.base.files import check_writable, make_folders, remove_folders
from marco_gguf.base.machine import physical_cores
from marco_gguf.base.progress import Progress
from marco_gguf.base.texts import decode_text, read_text_file
from marco_gguf.gguf_io.info import read_info, require_qwen3moe
from marco_gguf.llama.observer import GraphObserver, Node, ObservedModel
from marco_gguf.quant.imatrix_file import Entry, Imatrix, write_imatrix

MIN_DENSE_TOKENS = 16  # imatrix.cpp: "why are small batches ignored (<16 tokens)?"
GGML_TYPE_F32 = 0
DEFAULT_TEXT = "calibration/calibration.txt"  # shipped in the wheel, see calibration/README.md
DEFAULT_DATASET = "marco-gguf:calibration.txt"


def weight_name(name: str) -> str:
    """imatrix.cpp filter_tensor_name: `CUDA0#blk.0.attn_k.weight#0` -> `blk.0.attn_k.weight`."""
    if "#" in name:
        return name.split("#")[1]
    return name


class ImatrixCollector:
    """The cb_eval side of llama-imatrix: which nodes to look at and what to add up from them."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def wants(self, t: Node) -> bool:
        op = t.op
        if op == "MUL_MAT_ID":
            return True
        if op != "MUL_MAT":
            return False
        src0, src1 = t.arg(0), t.arg(1)
        if src1.ne[1] < MIN_DENSE_TOKENS or src1.type != GGML_TYPE_F32:
            return False
        return weight_name(src0.name).startswith("blk.")

    def take(self, t: Node) -> None:
        src0, src1 = t.arg(0), t.arg(1)
        name = weight_name(src0.name)
        x = src1.numpy()  # numpy order: (ne3, ne2, ne1, ne0)
        if t.op == "MUL_MAT_ID":
            self._take_experts(name, src0, x, t.arg(2).numpy())
        else:
            self._take_dense(name, src0, x)

    def _entry(self, name: str, ne0: int, n_mat: int, n_counts: int) -> Entry:
        e = self.entries.get(name)
        if e is None:
            e = self.entries[name] = Entry(np.zeros(ne0 * n_mat), np.zeros(n_counts, dtype=np.int64))
        elif len(e.sums) != ne0 * n_mat or len(e.counts) != n_counts:
            raise ImatrixError(f"{name}: inconsistent size ({len(e.sums)} vs {ne0 * n_mat} values)")
        return e

    def _take_experts(self, name: str, src0: Node, x: np.ndarray, ids: np.ndarray) -> None:
        # ids [n_tokens, n_used]; x [n_tokens, ne1, ne0] where ne1 is 1 (shared input) or n_used (per slot)
        n_as, (_, n_tokens, ne1, ne0) = src0.ne[2], x.shape
        if x.shape[0] != 1:
            raise ImatrixError(f"{name}: activations with more than 3 dimensions")
        ids = ids.reshape(n_tokens, -1)
        if ids.size and (ids.min() < 0 or ids.max() >= n_as):
            raise ImatrixError(f"{name}: routing ids outside 0..{n_as - 1}")
        e = self._entry(name, ne0, n_as, n_as)
        slots = np.arange(ids.shape[1]) % ne1
        rows = x[0][:, slots, :].reshape(-1, ne0).astype(np.float64)
        experts = ids.reshape(-1)
        order = np.argsort(experts, kind="stable")
        present, starts = np.unique(experts[order], return_index=True)
        sums = e.sums.reshape(n_as, ne0)
        sums[present] += np.add.reduceat(np.square(rows[order]), starts, axis=0)
        e.counts += np.bincount(experts, minlength=n_as)
        if not np.isfinite(sums[present]).all():
            raise ImatrixError(f"{name}: non-finite activations", "the model produces inf/nan on this text")

    def _take_dense(self, name: str, src0: Node, x: np.ndarray) -> None:
        ne03, ne02 = src0.ne[3], src0.ne[2]
        n_mat, ne0 = ne02 * ne03, x.shape[-1]
        e = self._entry(name, ne0, n_mat, 1)
        sums = e.sums.reshape(n_mat, ne0)
        sq = np.square(x.astype(np.float64)).sum(axis=2)  # over rows: (ne3, ne2, ne0)
        for i3 in range(x.shape[0]):
            for i2 in range(x.shape[1]):
                sums[(i3 % ne03) * ne02 + (i2 % ne02)] += sq[i3, i2]
        if not np.isfinite(sums).all():
            raise ImatrixError(f"{name}: non-finite activations", "the model produces inf/nan on this text")
        e.counts += x.shape[0] * x.shape[1] * x.shape[2] // n_mat


@dataclass(frozen=True)
class ImatrixResult:
    """What `compute_imatrix` produced, with its own measurements."""

    path: Path | None
    model: Path
    dataset: str
    n_tokens: int  # tokens the text gave
    chunks: int
    ctx: int
    n_entries: int
    seconds: float
    tokens_per_s: float
    imatrix: Imatrix

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "imatrix"}
        return {**d, "path": str(self.path) if self.path else None, "model": str(self.model)}


def read_text(
    path: str | Path | None, error: type[MarcoGGUFError] = ImatrixError, what: str = "the calibration text"
) -> tuple[str, str]:
    """(text, dataset name): the file's UTF-8 text, or the built-in calibration text. One trailing newline is
    dropped, as llama.cpp's `-f` does. Failures raise `error` (the caller's command's error type)."""
    if path is None:
        raw = (resources.files("marco_gguf") / DEFAULT_TEXT).read_bytes()
        return decode_text(raw, DEFAULT_DATASET, error), DEFAULT_DATASET
    return read_text_file(path, error, what), str(path)


def compute_imatrix(
    model: str | Path,
    *,
    text: str | Path | None = None,
    outfile: str | Path | None = None,
    ctx: int = 512,
    chunks: int | None = None,
    threads: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    kv_f32: bool = False,
) -> ImatrixResult:
    """Importance matrix of `model` (a qwen3moe GGUF) over `text` (a file; default: the built-in text),
    written to `outfile` in llama.cpp's GGUF imatrix format when given (`kv_f32`: an F32 KV cache)."""
    started = time.perf_counter()
    model = Path(model)
    require_qwen3moe(read_info(model))
    if ctx < MIN_DENSE_TOKENS:
        raise ImatrixError(
            f"-c {ctx}: a chunk needs at least {MIN_DENSE_TOKENS} tokens", "use the default of 512 or more"
        )
    out = Path(outfile) if outfile is not None else None
    if out is not None and out.exists() and not force:
        raise ImatrixError(f"{out}: already exists", "pass --force to overwrite it")
    if out is not None:  # before the minutes of computing, not after
        check_writable(out, hint="choose another -o", error=ImatrixError)
    body, dataset = read_text(text)
    collector = ImatrixCollector()
    with ObservedModel(
        model,
        GraphObserver(collector.wants, collector.take),
        n_ctx=ctx,
        threads=threads or physical_cores(),
        kv_f32=kv_f32,
    ) as m:
        tokens = m.tokenize(body)
        available = len(tokens) // ctx
        if available < 1:
            raise ImatrixError(
                f"{dataset}: {len(tokens):,} tokens, fewer than one chunk of -c {ctx}",
                f"give a longer text (at least {ctx:,} tokens) or a smaller -c",
            )
        n_chunks = min(chunks, available) if chunks else available
        batches = [tokens[i * ctx : (i + 1) * ctx] for i in range(n_chunks)]
        if m.add_bos:
            for chunk in batches:
                chunk[0] = m.bos
        run_seconds = m.run_chunks(batches, progress, what="imatrix")
    max_count = max((int(e.counts.max()) for e in collector.entries.values() if len(e.counts)), default=0)
    imatrix = Imatrix(collector.entries, [dataset], max_count // ctx, ctx)
    if out is not None:
        made = make_folders(out.parent)
        try:
            write_imatrix(imatrix, out)
        except BaseException:
            remove_folders(made)
            raise
    return ImatrixResult(
        out,
        model,
        dataset,
        len(tokens),
        n_chunks,
        ctx,
        len(imatrix.entries),
        time.perf_counter() - started,
        n_chunks * ctx / run_seconds if run_seconds else 0.0,
        imatrix,
    )
