"""`expert_usage()`: which experts each text uses, read from llama.cpp's own routing as it runs.

Through the graph observer, in every layer L llama.cpp's build_moe_ffn (src/llama-graph.cpp, as vendored
by llama-cpp-python 0.3.36) shows: `ffn_moe_topk-L` (I32 [k, tokens]: the experts chosen, softmax then
top-k), `ffn_moe_weights_norm-L` (F32 [k, tokens]: their renormalised gate weights, what the outputs
are multiplied by) and `ffn_moe_down-L` (F32 [hidden, k, tokens]: each chosen expert's output before
weighting). Per layer and expert this adds up the tokens routed to it, their gate weights, and gate
weight x ||expert output||, whose mean over the expert's tokens is REAP's saliency (arXiv 2510.13999).

Each text is tokenized with the model's special tokens (as imatrix does) and cut into chunks of `ctx`
tokens, the remainder being one shorter chunk, each evaluated from an empty KV cache.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from marco_gguf.base.errors import ExpertsError
from marco_gguf.base.machine import physical_cores
from marco_gguf.base.progress import Progress
from marco_gguf.experts.identity import gguf_identity
from marco_gguf.experts.plots import check_plotting, plot_usage
from marco_gguf.experts.records import ExpertUsage, TextUsage
from marco_gguf.experts.usage_file import check_writable, write_usage
from marco_gguf.llama.observer import GraphObserver, Node, ObservedModel, layer_of
from marco_gguf.quant.imatrix import read_text

TOPK, WEIGHTS, DOWN = "ffn_moe_topk", "ffn_moe_weights_norm", "ffn_moe_down"


class RoutingCollector:
    """The cb_eval side of `experts`: asks for the three routing tensors of every layer and adds them up."""

    def __init__(self, layers: int, experts: int, keep_routing: bool) -> None:
        self.layers, self.experts, self.keep_routing = layers, experts, keep_routing
        self._ids: dict[int, np.ndarray] = {}
        self._w: dict[int, np.ndarray] = {}
        self.start("")

    def start(self, label: str) -> None:
        """Add what follows to a fresh text."""
        shape = (self.layers, self.experts)
        self.label, self.counts = label, np.zeros(shape, dtype=np.int64)
        self.weight, self.reap_sum = np.zeros(shape), np.zeros(shape)
        self.routing: list[list[np.ndarray]] = [[] for _ in range(self.layers)]

    def wants(self, t: Node) -> bool:
        name = t.name
        return any(layer_of(name, p) is not None for p in (TOPK, WEIGHTS, DOWN))

    def take(self, t: Node) -> None:
        name = t.name
        if (layer := layer_of(name, TOPK)) is not None:
            ids = t.numpy()
            self._ids[layer] = ids.reshape(-1, ids.shape[-1]).astype(np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= self.experts):
                raise ExpertsError(f"{name}: routing ids outside 0..{self.experts - 1}")
        elif (layer := layer_of(name, WEIGHTS)) is not None:
            w = t.numpy()
            self._w[layer] = w.reshape(-1, w.shape[-1]).astype(np.float64)
        elif (layer := layer_of(name, DOWN)) is not None:
            self._add(layer, name, t.numpy())

    def _add(self, layer: int, name: str, down: np.ndarray) -> None:
        ids, w = self._ids.pop(layer, None), self._w.pop(layer, None)
        if ids is None or w is None or ids.shape != w.shape:
            raise ExpertsError(
                f"{name}: llama.cpp's graph did not show {TOPK}-{layer} and {WEIGHTS}-{layer} before it",
                "this llama.cpp build names its MoE tensors differently from the one marco-gguf was tested with",
            )
        norms = np.linalg.norm(down.reshape(ids.shape[0], ids.shape[1], -1).astype(np.float64), axis=-1)
        flat = ids.reshape(-1)
        self.counts[layer] += np.bincount(flat, minlength=self.experts)
        self.weight[layer] += np.bincount(flat, weights=w.reshape(-1), minlength=self.experts)
        self.reap_sum[layer] += np.bincount(flat, weights=(w * norms).reshape(-1), minlength=self.experts)
        if self.keep_routing:
            self.routing[layer].append(ids.astype(np.int32))

    def finish(self, source: str, tokens: int, k: int, chunks: tuple | None) -> TextUsage:
        per_layer = self.counts.sum(axis=1)
        if (per_layer != tokens * k).any():
            layer = int(np.argmax(per_layer != tokens * k))
            raise ExpertsError(
                f"layer {layer}: llama.cpp routed {per_layer[layer]:,} token slots, expected {tokens:,} "
                f"tokens x {k} experts",
                "this llama.cpp build's graph differs from the tested one",
            )
        routing = np.stack([np.concatenate(r) for r in self.routing]) if self.keep_routing else None
        return TextUsage(self.label, source, tokens, self.counts, self.weight, self.reap_sum, routing, chunks)


def text_labels(texts: Sequence[str | Path | None], labels: Sequence[str] | None) -> list[str]:
    """`--label` names in order, else each file's stem; they must be unique (they key the report)."""
    if labels and len(labels) != len(texts):
        raise ExpertsError(f"{len(labels)} --label for {len(texts)} --text", "give one --label per --text, or none")
    names = list(labels) if labels else [Path(t).stem if t is not None else "calibration" for t in texts]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ExpertsError(f"label {dup!r} is given to more than one text", "name each text with its own --label")
    return names


def _chunks(tokens: list[int], ctx: int) -> list[list[int]]:
    return [tokens[i : i + ctx] for i in range(0, len(tokens), ctx)]


def expert_usage(
    model: str | Path,
    texts: Sequence[str | Path | None] = (None,),
    *,
    labels: Sequence[str] | None = None,
    ctx: int = 512,
    threads: int | None = None,
    usage: str | Path | None = None,
    plot: str | Path | None = None,
    keep_routing: bool = False,
    kv_f32: bool = False,
    progress: Progress | None = None,
) -> ExpertUsage:
    """Routing statistics of `model` (a qwen3moe GGUF) over each text (a file; None: the built-in text),
    saved for `prune` to `usage` and drawn to `plot` (PNG) when given. `keep_routing` keeps every token's
    top-k experts (for tests); `kv_f32` uses an F32 KV cache (for exact comparisons)."""
    started, model = time.perf_counter(), Path(model)
    texts = list(texts) or [None]
    names = text_labels(texts, labels)
    if ctx < 1:
        raise ExpertsError(f"-c {ctx}: a chunk needs at least one token", "use the default of 512")
    for out in (usage, plot):
        if out is not None:
            check_writable(Path(out))
    if plot is not None:
        check_plotting()
    identity = gguf_identity(model)  # refuses a file that is not qwen3moe
    bodies = [read_text(t, ExpertsError, "the text") for t in texts]
    k, collector = identity.experts_per_token, RoutingCollector(identity.layers, identity.experts, keep_routing)
    results, seconds = [], 0.0
    with ObservedModel(
        model,
        GraphObserver(collector.wants, collector.take),
        n_ctx=ctx,
        threads=threads or physical_cores(),
        kv_f32=kv_f32,
    ) as m:
        tokenized = [m.tokenize(body) for body, _ in bodies]
        chunked = [_chunks(tokens, ctx) for tokens in tokenized]
        total, done = sum(len(c) for c in chunked), 0
        for name, (_, source), tokens, chunks in zip(names, bodies, tokenized, chunked):
            if not tokens:
                raise ExpertsError(f"{source}: the text gives no tokens", "give a text with some content")
            collector.start(name)
            seconds += m.run_chunks(chunks, _shifted(progress, done, total), what=name)
            done += len(chunks)
            results.append(
                collector.finish(source, len(tokens), k, tuple(map(tuple, chunks)) if keep_routing else None)
            )
    n_tokens = sum(len(t) for t in tokenized)
    result = ExpertUsage(
        identity, str(model), ctx, tuple(results), time.perf_counter() - started, n_tokens / seconds if seconds else 0.0
    )
    if usage is not None:
        write_usage(result, Path(usage))
    if plot is not None:
        plot_usage(result, Path(plot))
    return result


def _shifted(progress: Progress | None, done: int, total: int) -> Progress | None:
    """One text's chunk progress as part of all the texts' chunks."""
    if progress is None:
        return None
    return lambda e: progress(dataclasses.replace(e, done=done + e.done, total=total))
