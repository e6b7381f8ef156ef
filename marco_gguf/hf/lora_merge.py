"""A base checkpoint seen through a LoRA adapter: what `convert` reads (config, tensors, folder, read_rows), with
each block of rows a LoRA pair changes read as W + scale * B @ A in float32 and modules_to_save tensors in place
of the base's. Merging happens block by block inside the conversion's own reads, so memory stays as flat as
converting the base alone.

What this view gives equals PEFT's `merge_and_unload()` model: PEFT merges `W += (B @ A) * scale`
(lora.Linear.merge / ParamWrapper.merge), and a tied base whose embeddings are replaced by modules_to_save keeps
its old embeddings as the output head (the wrapper copies embed_tokens; lm_head still holds the original), which
a GGUF says with an output tensor of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from marco_gguf.arch.qwen3moe import EMBEDDINGS, LM_HEAD, parse_hf_name
from marco_gguf.hf.checkpoint import Checkpoint
from marco_gguf.hf.lora import LoraAdapter, Site
from marco_gguf.hf.safetensors_format import TensorRef

FUSED_SUFFIXES = (".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")


class MergedSource:
    """`ckpt` with `adapter` merged in, read block by block (the Checkpoint interface convert uses)."""

    def __init__(self, ckpt: Checkpoint, adapter: LoraAdapter) -> None:
        self.ckpt, self.adapter = ckpt, adapter
        self.config, self.folder = ckpt.config, ckpt.folder
        self.tensors: dict[str, TensorRef] = {**ckpt.tensors, **adapter.replaced}
        if EMBEDDINGS in adapter.replaced and LM_HEAD not in self.tensors:
            self.tensors[LM_HEAD] = ckpt.tensors[EMBEDDINGS]  # the tied head keeps the base's embeddings
        # the conversion's workers are the parallelism: a multi-threaded BLAS under each of them spins against the
        # others (measured 10-15x slower B @ A on 2 cores), so the merge's small matmuls run on one BLAS thread
        self._blas = threadpool_limits(1, user_api="blas")

    @classmethod
    def open(cls, folder: Path, adapter_folder: Path) -> MergedSource:
        """A base checkpoint folder and an adapter folder checked against it."""
        ckpt = Checkpoint(folder)
        try:
            return cls(ckpt, LoraAdapter(adapter_folder, ckpt.config, ckpt.tensors))
        except BaseException:
            ckpt.close()
            raise

    def __enter__(self) -> MergedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._blas.restore_original_limits()
        self.adapter.close()
        self.ckpt.close()

    def read_rows(self, name: str, start: int = 0, count: int | None = None) -> np.ndarray:
        ref = self.tensors[name]
        count = ref.n_rows - start if count is None else count
        if name in self.adapter.replaced:
            return self.adapter.read_replaced(name, start, count)
        rows = self.ckpt.read_rows(ref.name, start, count)
        for offset, n, site, first in row_sites(self.adapter, name, start, count):
            pair = self.adapter.pairs.get(site)
            if pair is not None:
                rows[offset : offset + n] += self.adapter.delta(pair, first, n)
        return rows


def row_sites(adapter: LoraAdapter, name: str, start: int, count: int) -> Iterator[tuple[int, int, Site, int]]:
    """(offset in the block, rows, site, first row of the site's matrix) runs of rows [start, start+count) of the
    base tensor `name`; a fused expert tensor's rows cross experts (and gate/up halves) at fixed strides."""
    c = adapter.config
    if name.endswith(FUSED_SUFFIXES):
        layer = int(name.split(".")[2])
        gate_up = name.endswith("gate_up_proj")
        per_expert = 2 * c.expert_ff if gate_up else c.hidden
        g = start
        while g < start + count:
            e, h = divmod(g, per_expert)
            if gate_up:
                kind, first, end = (
                    ("ffn_gate_exps", h, c.expert_ff)
                    if h < c.expert_ff
                    else ("ffn_up_exps", h - c.expert_ff, c.expert_ff)
                )
            else:
                kind, first, end = "ffn_down_exps", h, c.hidden
            n = min(end - first, start + count - g)
            yield g - start, n, Site(layer, kind, e), first
            g += n
        return
    parsed = parse_hf_name(name)
    if parsed is not None:
        layer_no, hf_kind, expert = parsed
        if layer_no is not None:
            yield 0, count, Site(layer_no, hf_kind.gguf, expert), start
