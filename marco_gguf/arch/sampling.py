"""Sampling as one value: Marco's defaults, overlaid by the GGUF's `general.sampling.*`, then by the user.

`chat`, `serve` (its defaults and the page's), the engine and the Ollama export all resolve sampling here, so a
model whose generation_config.json says temperature 0.6 runs at 0.6 everywhere unless the user says otherwise.
llama.cpp does the same (common/arg.cpp applies a GGUF's general.sampling.* to every setting the user left alone).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gguf

from marco_gguf.base.errors import ChatError

_K = gguf.Keys.General


@dataclass(frozen=True)
class Sampling:
    """One request's sampling; `grammar` is GBNF text (root rule `root`) that every reply must match.

    The defaults are Qwen3's recommended non-thinking settings (Qwen3 model card: temperature 0.7, top-p 0.8,
    top-k 20, min-p 0), which Marco-Instruct, fine-tuned from Qwen3 in that mode, inherits."""

    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    grammar: str | None = None

    def overlay(self, changes: Mapping[str, Any]) -> Sampling:
        """This sampling with `changes` (Sampling field -> value; None means "not set", keeps ours)."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ChatError(f"unknown sampling setting {unknown[0]!r}", f"known: {', '.join(sorted(fields))}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# GGUF key (gguf-py Keys.General.SAMPLING_*, written by the converter from generation_config.json) -> field
GGUF_KEYS: Mapping[str, str] = {
    _K.SAMPLING_TEMP: "temperature",
    _K.SAMPLING_TOP_K: "top_k",
    _K.SAMPLING_TOP_P: "top_p",
    _K.SAMPLING_MIN_P: "min_p",
    _K.SAMPLING_PENALTY_REPEAT: "repeat_penalty",
}
_INTS = frozenset({"top_k"})


def gguf_sampling(fields: Mapping[str, Any]) -> dict[str, float | int]:
    """The sampling settings a GGUF carries, by Sampling field. Values may be numbers (our reader) or llama.cpp's
    metadata strings ("0.600000"); floats are float32 in the file, so 0.6 reads 0.60000002 and is rounded back to
    the 6 significant digits float32 holds."""
    out: dict[str, float | int] = {}
    for key, name in GGUF_KEYS.items():
        value = fields.get(key)
        if value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue  # a damaged value is no setting; the file's checks report what llama.cpp refuses
        out[name] = int(number) if name in _INTS else float(f"{number:.6g}")
    return out


def model_sampling(model: Mapping[str, Any], user: Mapping[str, Any] | None = None) -> Sampling:
    """Marco's defaults, overlaid by the model's settings (`gguf_sampling` of its file), then by the user's
    (None: not set)."""
    return Sampling().overlay(model).overlay(user or {})
