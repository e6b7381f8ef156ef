"""Pruning a GGUF: expert stacks and routers sliced byte for byte, everything else copied, nothing requantized.

An expert stack is ne {.., .., E}: expert e is the e-th of E equal, contiguous byte ranges; a router
(`ffn_gate_inp`, ne {hidden, E}) has one row per expert. Metadata is copied key for key in the source's
order with `expert_count` set to N, the size label recomputed when it was the computed one, and the
`marco.prune.*` keys appended: the same keys, in the same order, as a checkpoint pruned by `convert`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf

from marco_gguf.arch.qwen3moe import ARCH_NAME, PlannedTensor, parse_name
from marco_gguf.base.errors import PruneError
from marco_gguf.base.progress import Progress, ProgressEvent
from marco_gguf.gguf_io.metadata import count_parameters
from marco_gguf.gguf_io.reader import Header, StoredTensor, read_header
from marco_gguf.gguf_io.writer import GGUFStreamWriter, TensorSpec
from marco_gguf.quant.imatrix_file import Imatrix, write_imatrix

COPY_BLOCK = 8 << 20  # bytes per read when copying a tensor whole
SIZE_LABEL = gguf.Keys.General.SIZE_LABEL


def _sliced_layer(name: str) -> int | None:
    """The layer of a tensor that pruning slices by expert (a stack or a router, per the spec's table)."""
    parsed = parse_name(name)
    return parsed[0] if parsed is not None and parsed[1].prune != "copy" else None


def _pieces(t: StoredTensor, kept: list[list[int]], n_experts: int) -> Iterator[tuple[int, int]]:
    """(offset, length) byte ranges that make the pruned tensor, in order."""
    if (layer := _sliced_layer(t.name)) is not None:
        per = t.n_bytes // n_experts
        for e in kept[layer]:
            yield t.offset + e * per, per
        return
    for start in range(0, t.n_bytes, COPY_BLOCK):
        yield t.offset + start, min(COPY_BLOCK, t.n_bytes - start)


def _copied_metadata(
    header: Header,
    keep: int,
    new_shapes: list[tuple[str, tuple[int, ...]]],
    old_shapes: list[tuple[str, tuple[int, ...]]],
) -> dict[str, Any]:
    """The source's keys with their types and array item types (our reader keeps both), expert_count = N."""
    V = gguf.GGUFValueType
    kv = {k: gguf.GGUFValue(v, header.types[k], header.item_types.get(k)) for k, v in header.fields.items()}
    kv[f"{ARCH_NAME}.expert_count"] = gguf.GGUFValue(keep, V.UINT32)
    label = kv.get(SIZE_LABEL)
    if label is not None and label.value == _size_label(old_shapes):  # computed, not the model card's: recompute
        kv[SIZE_LABEL] = gguf.GGUFValue(_size_label(new_shapes), V.STRING)
    return kv


def _size_label(shapes: list[tuple[str, tuple[int, ...]]]) -> str:
    return count_parameters([PlannedTensor(n, None, None, s, ()) for n, s in shapes]).size_label  # type: ignore[arg-type]


def prune_gguf(
    source: Path,
    keep: int,
    kept: list[list[int]],
    extra: dict[str, Any],
    out: Path,
    *,
    imatrix: Imatrix | None,
    force: bool,
    progress: Progress | None,
) -> tuple[Path, Path | None]:
    """Write the pruned GGUF (and the sliced imatrix beside it, when given); returns both paths."""
    header = read_header(source)
    if header.fields.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT) != gguf.GGUF_DEFAULT_ALIGNMENT:
        raise PruneError(
            f"{source}: general.alignment is not {gguf.GGUF_DEFAULT_ALIGNMENT}", "convert it again with marco-gguf"
        )
    n_experts = header.fields[f"{ARCH_NAME}.expert_count"]
    old = [(t.name, t.shape) for t in header.tensors]
    new = [(t.name, (keep, *t.shape[1:]) if _sliced_layer(t.name) is not None else t.shape) for t in header.tensors]
    kv = {**_copied_metadata(header, keep, new, old), **extra}
    specs = [TensorSpec(name, shape, t.type) for (name, shape), t in zip(new, header.tensors)]
    imatrix_out = out.with_name(out.name.removesuffix(".gguf") + ".imatrix.gguf") if imatrix is not None else None
    if imatrix_out is not None and imatrix_out.exists() and not force:
        raise PruneError(f"{imatrix_out}: already exists", "pass --force to overwrite it")
    with open(source, "rb") as src, GGUFStreamWriter(out, kv, specs, overwrite=force, option="-o") as writer:
        done = len(writer.header)
        for t in header.tensors:
            for offset, length in _pieces(t, kept, n_experts):
                data = os.pread(src.fileno(), length, offset)
                writer.write(data)
                done += length
                if progress is not None:
                    progress(ProgressEvent(done, writer.total_bytes, "bytes", t.name))
        writer.commit()
    if imatrix is not None and imatrix_out is not None:
        try:
            write_imatrix(imatrix, imatrix_out)
        except BaseException:
            out.unlink()  # both files or neither
            raise
    return out, imatrix_out
