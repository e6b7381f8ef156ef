"""Quantizing with an importance matrix, as llama-quantize does (tools/quantize/quantize.cpp and
src/llama-quant.cpp, as vendored by llama-cpp-python 0.3.36).

Each tensor gets its normalised vector (`Imatrix.importance`): one slice of `ne0` per expert, the slice of
expert e passed with that expert's rows to `ggml_quantize_chunk`. A tensor without an entry gets none;
an entry of the wrong size is an error (llama.cpp lets only token_embd pass with none). Unlike
llama-quantize, entries naming tensors the model does not have are an error too: such a file was made
for another model. The `quantize.imatrix.*` keys are the ones llama-quantize adds as KV overrides.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from marco_gguf.arch.qwen3moe import PlannedTensor
from marco_gguf.base.errors import ImatrixError
from marco_gguf.gguf_io.writer import TensorSpec
from marco_gguf.quant.imatrix_file import Imatrix, read_imatrix
from marco_gguf.quant.presets import Preset

KEY_FILE, KEY_DATASET = "quantize.imatrix.file", "quantize.imatrix.dataset"
KEY_ENTRIES, KEY_CHUNKS = "quantize.imatrix.entries_count", "quantize.imatrix.chunks_count"
KV_STRING_MAX = 127  # llama_model_kv_override.val_str is char[128]; quantize.cpp strncpy's 127 bytes
HINT = "make one for this model: marco-gguf imatrix MODEL-Q8_0.gguf -o model.imatrix.gguf"


@dataclass(frozen=True)
class Importance:
    """An imatrix checked against one conversion: per GGUF tensor name, its float32 vector."""

    path: Path
    imatrix: Imatrix
    vectors: Mapping[str, np.ndarray]

    def for_tensor(self, name: str) -> np.ndarray | None:
        return self.vectors.get(name)


def experts_of(t: PlannedTensor) -> int:
    """ne[2] of a tensor: the number of stacked matrices (1 for a plain matrix)."""
    return t.shape[0] if len(t.shape) == 3 else 1


def load_importance(path: str | Path, planned: Sequence[PlannedTensor]) -> Importance:
    """Read `path` and match it to the planned tensors: missing names are fine, foreign names and wrong sizes not."""
    path = Path(path)
    imatrix = read_imatrix(path)
    if not imatrix.legacy and not imatrix.has_metadata:
        raise ImatrixError(
            f"{path}: missing imatrix metadata (imatrix.datasets, chunk_count, chunk_size)",
            "llama-quantize refuses such a file too; make it again",
        )
    by_name = {t.name: t for t in planned}
    foreign = sorted(n for n in imatrix.entries if n not in by_name)
    if foreign:
        raise ImatrixError(
            f"{path}: imatrix entry {foreign[0]}"
            + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "")
            + " name no tensor of this model: it was made for another model",
            HINT,
        )
    vectors = {}
    for name in imatrix.entries:
        t, vec = by_name[name], imatrix.importance(name)
        assert vec is not None  # every name comes from the file's own entries
        want = t.row_len * experts_of(t)
        if len(vec) != want:
            if name == "token_embd.weight":  # llama-quant.cpp: "tok_embd should be ignored in this case"
                continue
            raise ImatrixError(
                f"{path}: {name} has {len(vec):,} importance values, the tensor needs {want:,} "
                f"({t.row_len} x {experts_of(t)}): the imatrix was made for another model",
                HINT,
            )
        if not np.isfinite(vec).all():
            raise ImatrixError(f"{path}: {name} holds non-finite values", HINT)
        vectors[name] = vec
    return Importance(path, imatrix, vectors)


def check_required(preset: Preset, specs: Sequence[TensorSpec], importance: Importance | None) -> None:
    """Very low-bit types refuse tensors without importance data, naming the first one and how to fix it."""
    for s in specs:
        if preset.requires_imatrix(s.name, s.type) and (importance is None or importance.for_tensor(s.name) is None):
            if importance is None:
                raise ImatrixError(
                    f"preset {preset.id}: {s.name} is {s.type.name}, which needs an importance matrix",
                    "pass --imatrix FILE (from `marco-gguf imatrix`) or use --calibrate",
                )
            raise ImatrixError(
                f"{importance.path}: no importance data for {s.name}, which {preset.id} makes "
                f"{s.type.name} (a very low-bit type that needs it)",
                HINT,
            )


def _clip(text: str) -> str:
    return text.encode("utf-8")[:KV_STRING_MAX].decode("utf-8", errors="ignore")


def add_imatrix_keys(kv: MutableMapping[str, Any], importance: Importance, given_as: str | Path) -> None:
    """quantize.imatrix.{file, dataset, entries_count, chunks_count} as llama-quantize writes them (u32 ints)."""
    im = importance.imatrix
    V = gguf.GGUFValueType
    kv[KEY_FILE] = gguf.GGUFValue(_clip(str(given_as)), V.STRING)
    if im.datasets:
        kv[KEY_DATASET] = gguf.GGUFValue(_clip(im.datasets[0]), V.STRING)
    kv[KEY_ENTRIES] = gguf.GGUFValue(len(im.entries), V.UINT32)
    if im.chunk_count > 0:
        kv[KEY_CHUNKS] = gguf.GGUFValue(im.chunk_count, V.UINT32)
