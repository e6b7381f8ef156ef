"""Which model a measurement belongs to: the same figures from a GGUF (any preset) and from its checkpoint.

A usage file from `experts` must not be applied by `prune` to another model. Shapes alone do not tell a
Base from an Instruct model, so the identity also hashes the routers' weights: `ffn_gate_inp` is stored
F32 in every preset (llama.cpp never quantizes it), and a checkpoint's router widened to float32 is the same
bytes, so one model has one identity whichever file it is read from.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q

from marco_gguf.arch.qwen3moe import ARCH_KEY, ARCH_NAME, ROUTER
from marco_gguf.base.errors import GGUFFileError
from marco_gguf.gguf_io.reader import read_header


@dataclass(frozen=True)
class ModelIdentity:
    architecture: str
    layers: int
    experts: int
    experts_per_token: int
    file: str  # the measured file's name (shown in messages, not compared)
    file_size: int
    shapes_sha256: str  # tensor names and shapes, sorted by name (types excluded: presets differ there)
    router_sha256: str  # every layer's router as float32, layer by layer

    def as_dict(self) -> dict:
        return asdict(self)


def shapes_hash(tensors: Iterable[tuple[str, tuple[int, ...]]]) -> str:
    h = hashlib.sha256()
    for name, shape in sorted(tensors):
        h.update(f"{name}:{','.join(map(str, shape))}\n".encode())
    return h.hexdigest()


def router_hash(layers: int, read_router: Callable[[int], np.ndarray]) -> str:
    h = hashlib.sha256()
    for layer in range(layers):
        h.update(np.ascontiguousarray(read_router(layer), dtype="<f4").tobytes())
    return h.hexdigest()


def gguf_identity(path: str | Path) -> ModelIdentity:
    """The identity of a qwen3moe GGUF, reading only its header and its routers (F32)."""
    path = Path(path)
    header = read_header(path)
    f, by_name = header.fields, {t.name: t for t in header.tensors}
    arch = f.get(ARCH_KEY)
    if arch != ARCH_NAME:
        raise GGUFFileError(
            f"{path}: architecture {arch!r} is not {ARCH_NAME}", "marco-gguf runs Marco (qwen3moe) GGUFs only"
        )
    layers = int(f.get(f"{arch}.block_count", 0))

    def read_router(layer: int) -> np.ndarray:
        t = by_name.get(ROUTER.name(layer))
        if t is None or t.type != Q.F32:
            raise GGUFFileError(
                f"{path}: {ROUTER.name(layer)} is "
                + ("missing" if t is None else t.type.name)
                + ", expected an F32 router",
                "convert the model again with marco-gguf",
            )
        with open(path, "rb") as fh:
            return np.frombuffer(os.pread(fh.fileno(), t.n_bytes, t.offset), dtype="<f4")

    return ModelIdentity(
        arch,
        layers,
        int(f.get(f"{arch}.expert_count", 0)),
        int(f.get(f"{arch}.expert_used_count", 0)),
        path.name,
        path.stat().st_size,
        shapes_hash((t.name, t.shape) for t in header.tensors),
        router_hash(layers, read_router),
    )


def checkpoint_identity(
    folder: Path, config, planned, read_rows: Callable[[str, int, int], np.ndarray]
) -> ModelIdentity:
    """The identity of a checkpoint, from its conversion plan (GGUF names and shapes) and its routers
    read as float32: the same as the identity of any GGUF converted from it."""
    routers = {t.layer: t.pieces[0] for t in planned if t.kind == ROUTER.tensor}

    def read_router(layer: int) -> np.ndarray:
        piece = routers[layer]
        return read_rows(piece.source, piece.start, piece.count)

    return ModelIdentity(
        ARCH_NAME,
        config.n_layers,
        config.n_experts,
        config.n_experts_used,
        Path(folder).name,
        0,
        shapes_hash((t.name, t.shape) for t in planned),
        router_hash(config.n_layers, read_router),
    )
