"""The `--usage` file: what `experts` measured, in JSON, for `prune` to read back.

It records the model's identity (identity.py) so that `prune` can refuse a file measured on another model,
and per text the token counts, routing mass and REAP sums per layer x expert.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import ExpertsError
from .files import write_text_atomic
from .identity import ModelIdentity

KIND, VERSION = "marco-gguf expert usage", 1
HINT = "write one with: marco-gguf experts MODEL.gguf --text FILE --usage usage.json"


def check_writable(path: Path) -> None:
    """Refuse before any work: a missing or read-only folder."""
    folder = path.parent
    if not folder.is_dir():
        raise ExpertsError(f"{folder}: output folder does not exist", "create it first")
    if not os.access(folder, os.W_OK):
        raise ExpertsError(f"{folder}: output folder is not writable", "choose another path")


def write_usage(usage, path: Path) -> Path:
    """Write an ExpertUsage atomically (a temporary file beside `path`, then one rename)."""
    doc = {"kind": KIND, "version": VERSION, **usage.as_dict()}
    try:
        write_text_atomic(Path(path), json.dumps(doc) + "\n")
    except OSError as e:
        raise ExpertsError(
            f"{path}: cannot write the usage file ({e.strerror})", "check the folder and free space"
        ) from None
    return Path(path)


def _array(path: Path, text: dict, key: str, shape: tuple[int, int], dtype: type) -> np.ndarray:
    try:
        a: np.ndarray = np.asarray(text[key], dtype=dtype)
    except (KeyError, TypeError, ValueError):
        raise ExpertsError(f"{path}: text {text.get('label')!r} has no numeric {key!r} table", HINT) from None
    if a.shape != shape or not np.isfinite(a).all() or (a < 0).any():
        raise ExpertsError(
            f"{path}: text {text.get('label')!r}: {key} has shape {list(a.shape)}, expected "
            f"{list(shape)} (layers x experts) of finite values >= 0",
            HINT,
        )
    return a


def read_usage(path: str | Path):
    """Read a usage file back as an ExpertUsage; anything else is one ExpertsError naming the problem."""
    from .experts import ExpertUsage, TextUsage

    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ExpertsError(f"{path}: cannot read the usage file ({e.strerror})", HINT) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExpertsError(f"{path}: not a usage file (not valid JSON: {e})", HINT) from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND or doc.get("version") != VERSION:
        found = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise ExpertsError(f"{path}: not a usage file (kind {found!r}, expected {KIND!r} version {VERSION})", HINT)
    try:
        model = ModelIdentity(**doc["model"])
        texts = list(doc["texts"])
    except (KeyError, TypeError) as e:
        raise ExpertsError(f"{path}: damaged usage file (model or texts: {e})", HINT) from None
    if not texts or not all(isinstance(t, dict) for t in texts):
        raise ExpertsError(f"{path}: the usage file holds no texts, or texts that are not objects", HINT)
    shape = (model.layers, model.experts)
    out = tuple(
        TextUsage(
            str(t.get("label")),
            str(t.get("source")),
            int(t.get("tokens") or 0),
            _array(path, t, "counts", shape, np.int64),
            _array(path, t, "weight", shape, np.float64),
            _array(path, t, "reap_sum", shape, np.float64),
        )
        for t in texts
    )
    return ExpertUsage(
        model,
        str(doc.get("model_path")),
        int(doc.get("ctx") or 0),
        out,
        float(doc.get("seconds") or 0),
        float(doc.get("tokens_per_s") or 0),
    )
