"""The `--usage` file: what `experts` measured, in JSON, for `prune` to read back.

It records the model's identity (identity.py) so that `prune` can refuse a file measured on another model,
and per text the token counts, routing mass and REAP sums per layer x expert.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from marco_gguf.base.errors import ExpertsError
from marco_gguf.base.files import write_text_atomic
from marco_gguf.base.jsonfields import Fields
from marco_gguf.experts.identity import ModelIdentity
from marco_gguf.experts.records import ExpertUsage, TextUsage

KIND, VERSION = "marco-gguf expert usage", 1
HINT = "write one with: marco-gguf experts MODEL.gguf --text FILE --usage usage.json"


def check_writable(path: Path) -> None:
    """Refuse before any work: a missing or read-only folder."""
    folder = path.parent
    if not folder.is_dir():
        raise ExpertsError(f"{folder}: output folder does not exist", "create it first")
    if not os.access(folder, os.W_OK):
        raise ExpertsError(f"{folder}: output folder is not writable", "choose another path")


def write_usage(usage: ExpertUsage, path: Path) -> Path:
    """Write an ExpertUsage atomically (a temporary file beside `path`, then one rename)."""
    doc = {"kind": KIND, "version": VERSION, **usage.as_dict()}
    try:
        write_text_atomic(Path(path), json.dumps(doc) + "\n")
    except OSError as e:
        raise ExpertsError(
            f"{path}: cannot write the usage file ({e.strerror})", "check the folder and free space"
        ) from None
    return Path(path)


def _array(t: Fields, key: str, shape: tuple[int, int], whole: bool) -> np.ndarray:
    """A layers x experts table of finite values >= 0 (whole numbers for counts)."""
    raw = t.data.get(key)
    expected = f"{list(shape)} (layers x experts) of finite {'whole numbers' if whole else 'values'} >= 0"
    try:
        a: np.ndarray = np.asarray(raw, dtype=np.float64)  # None -> NaN, refused below
    except (TypeError, ValueError, OverflowError):
        raise t.fail(key, raw, f"a table {expected}") from None
    ok = a.shape == shape and bool(np.isfinite(a).all()) and not (a < 0).any()
    if ok and whole:
        ok = not (a != np.floor(a)).any() and not (a > 2**53).any()  # float64 holds whole numbers exactly to 2**53
    if not ok:
        found = f"has shape {list(a.shape)}" if a.shape != shape else "holds a value outside that"
        raise ExpertsError(f"{t.path}: {t.where}{key} {found}, expected {expected}", HINT)
    return a.astype(np.int64) if whole else a


def _identity(f: Fields) -> ModelIdentity:
    m = f.sub("model")
    return ModelIdentity(
        architecture=m.str("architecture"),
        layers=m.int("layers", lo=1),
        experts=m.int("experts", lo=1),
        experts_per_token=m.int("experts_per_token", lo=1),
        file=m.str("file"),
        file_size=m.int("file_size", hi=2**63 - 1),
        shapes_sha256=m.str("shapes_sha256"),
        router_sha256=m.str("router_sha256"),
    )


def read_usage(path: str | Path) -> ExpertUsage:
    """Read a usage file back as an ExpertUsage; anything else is one ExpertsError naming the problem."""
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
    f = Fields(doc, path, ExpertsError, HINT)
    model, texts = _identity(f), f.list("texts", dict)
    if not texts:
        raise ExpertsError(f"{path}: the usage file holds no texts", HINT)
    shape = (model.layers, model.experts)
    out = []
    for i, text in enumerate(texts):
        t = Fields(text, path, ExpertsError, HINT, f"texts[{i}].")
        out.append(
            TextUsage(
                t.str("label"),
                t.str("source"),
                t.int("tokens", hi=2**63 - 1),
                _array(t, "counts", shape, whole=True),
                _array(t, "weight", shape, whole=False),
                _array(t, "reap_sum", shape, whole=False),
            )
        )
    return ExpertUsage(
        model,
        f.str("model_path", default=""),
        f.int("ctx", default=0),
        tuple(out),
        f.number("seconds", default=0.0, exclusive_lo=False),
        f.number("tokens_per_s", default=0.0, exclusive_lo=False),
    )
