"""The model a plan is made for (what planning reads of a conversion), and the price of a choice of types on it:
file size, bits/weight, bytes read per generated token, and the error the measurements estimate for it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import MODEL_TENSOR as T
from gguf import GGMLQuantizationType as Q

from marco_gguf.arch.config import MarcoConfig
from marco_gguf.arch.qwen3moe import PlannedTensor, bytes_per_token
from marco_gguf.gguf_io.writer import ALIGNMENT, TensorSpec
from marco_gguf.quant.importance import Importance, experts_of
from marco_gguf.quant.measure_types import quantizable
from marco_gguf.quant.presets import Preset, builtin_presets, load_preset

SKIPPED_PRESETS = ("f32", "bf16")  # not quantizations: never a plan's neighbour


@dataclass(frozen=True)
class Model:
    """What planning reads of the conversion: its tensors, config, reader, imatrix and header pricing."""

    folder: Path
    planned: Sequence[PlannedTensor]
    config: MarcoConfig
    tied: bool
    read_rows: Callable[[str, int, int], np.ndarray]
    files: Sequence[Path]
    importance: Importance | None
    imatrix_label: str | None
    header_bytes: Callable[[Preset], int]  # the GGUF header (metadata, tensor table, padding) under a preset
    sensitivity: Path | None = None  # a GGUF of this model to measure each tensor's gain on (quant/sensitivity.py)


def padded(n: int) -> int:
    return n + (ALIGNMENT - n % ALIGNMENT) % ALIGNMENT


def token_share(t: PlannedTensor, config: MarcoConfig, tied: bool) -> float:
    """The share of a tensor's bytes one generated token reads (as arch.bytes_per_token counts them)."""
    if experts_of(t) > 1:
        return config.n_experts_used / experts_of(t)
    if t.kind == T.TOKEN_EMBD:
        return 1 / t.shape[0] + (1 if tied else 0)
    return 1.0


@dataclass(frozen=True)
class Priced:
    """A preset or plan priced on this model: file size, bits/weight, bytes per token, estimated error."""

    preset: str
    size_bytes: int
    bits_per_weight: float
    bytes_per_token: int
    estimated_error: float | None  # None when some of its types were not measured


def price(model: Model, name: str, types: dict[str, Q], header: int, errors: dict[str, dict[str, float]]) -> Priced:
    specs = [TensorSpec(t.name, t.shape, types.get(t.name, Q.F32)) for t in model.planned]
    data = sum(s.n_bytes for s in specs)
    stacks = [experts_of(t) for t in model.planned if experts_of(t) > 1]
    hparams = {"expert_used_count": model.config.n_experts_used, "expert_count": stacks[0] if stacks else 0}
    known = all(q.name in errors.get(n, {}) for n, q in types.items())
    return Priced(
        name,
        header + sum(padded(s.n_bytes) for s in specs),
        8 * data / sum(t.n_elements for t in model.planned),
        bytes_per_token(specs, hparams),
        sum(errors[n][q.name] for n, q in types.items()) if known else None,
    )


def fixed_presets(model: Model, errors: dict[str, dict[str, float]]) -> tuple[Priced, ...]:
    """Every shipped preset this model can be made with here (those needing an imatrix only with one), priced."""
    c, out = model.config, []
    header = model.header_bytes(load_preset("q8_0"))  # a fixed preset's header: the same length for all
    for preset_id, path in builtin_presets().items():
        p = load_preset(path)
        if preset_id in SKIPPED_PRESETS:
            continue
        types = {
            t.name: p.tensor_type(
                t,
                n_layers=c.n_layers,
                tied=model.tied,
                n_experts=c.n_experts,
                n_gqa=c.n_heads // c.n_kv_heads,
                imatrix=model.importance is not None,
            )
            for t in model.planned
            if quantizable(t)
        }
        vectors = model.importance.vectors if model.importance is not None else {}
        if any(p.requires_imatrix(n, q) and n not in vectors for n, q in types.items()):
            continue
        out.append(price(model, p.name, types, header, errors))
    return tuple(sorted(out, key=lambda p: (p.size_bytes, p.preset)))


def neighbours(plan: Priced, presets: Sequence[Priced]) -> tuple[Priced, ...]:
    below = [p for p in presets if p.size_bytes <= plan.size_bytes]
    above = [p for p in presets if p.size_bytes > plan.size_bytes]
    return tuple(([below[-1]] if below else []) + ([above[0]] if above else []))
