"""Measurements kept beside the output, so that planning another budget for the same model does not measure
again. One JSON file per (source, imatrix, tool version, sample) key:
`<folder>/<model>.measure-<key>.json`, holding each tensor's error per type. A file that is damaged or was
made under another key is not an error: it is measured again and replaced (it is ours, never a user's input).

The source's identity is its tensors' names and shapes, its shard files' names and sizes, its config.json
and its routers' weights (every layer's, as float32): a fine-tune of the same model changes the routers,
a re-download of the same files changes nothing. The imatrix is identified by its bytes' SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q

from marco_gguf.arch.qwen3moe import ROUTER, PlannedTensor
from marco_gguf.base.files import make_folders, write_text_atomic
from marco_gguf.version import __version__

FORMAT = 1  # bump when what is measured changes (objective, weights, sampling)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_identity(
    folder: Path, planned: Sequence[PlannedTensor], files: Sequence[Path], read_rows: Callable[..., np.ndarray]
) -> str:
    h = hashlib.sha256()
    config = folder / "config.json"
    h.update(config.read_bytes() if config.is_file() else b"")
    for f in sorted(files):
        h.update(f"{f.name}:{f.stat().st_size}\n".encode())
    for t in planned:
        h.update(f"{t.name}:{','.join(map(str, t.shape))}\n".encode())
        if t.kind == ROUTER.tensor:
            for p in t.pieces:
                h.update(np.ascontiguousarray(read_rows(p.source, p.start, p.count), dtype="<f4").tobytes())
    return h.hexdigest()


def cache_key(source: str, imatrix_sha256: str | None, sample_rows: int, seed: int) -> str:
    parts = [f"format {FORMAT}", f"marco-gguf {__version__}", source, imatrix_sha256 or "no imatrix"]
    return hashlib.sha256("\n".join([*parts, f"sample {sample_rows} seed {seed}"]).encode()).hexdigest()


def cache_path(folder: Path, stem: str, key: str) -> Path:
    return folder / f"{stem}.measure-{key[:16]}.json"


def read_keyed(path: Path, key: str) -> dict | None:
    """A cache file's document (a JSON object) when it was made under `key`; None when the file is missing,
    damaged or another key's. Every cache here is ours, never a user's input: such a file is measured again."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("key") == key else None


def write_keyed(path: Path, doc: Mapping) -> None:
    make_folders(path.parent)
    write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def load(path: Path, key: str) -> dict[str, dict[str, float]]:
    """The cached errors, or nothing when the file is missing, damaged or made under another key."""
    doc = read_keyed(path, key)
    if doc is None or not isinstance(doc.get("errors"), dict):
        return {}
    out: dict[str, dict[str, float]] = {}
    for name, errors in doc["errors"].items():
        if not isinstance(errors, dict):
            return {}
        for q, e in errors.items():
            if q not in Q.__members__ or not isinstance(e, float) or not math.isfinite(e) or e < 0:
                return {}
        out[name] = dict(errors)
    return out


def save(path: Path, key: str, errors: Mapping[str, Mapping[str, float]]) -> None:
    write_keyed(path, {"key": key, "format": FORMAT, "version": __version__, "errors": errors})
