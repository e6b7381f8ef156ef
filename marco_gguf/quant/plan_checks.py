"""A plan's target in the allocator's terms, and the refusals made before anything is measured or written:
a target the candidate types cannot meet, one that needs no quantizing, a cap below what a token must read."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gguf import GGMLQuantizationType as Q

from marco_gguf.arch.qwen3moe import PlannedTensor
from marco_gguf.base.errors import PlanError
from marco_gguf.gguf_io.writer import TensorSpec
from marco_gguf.quant.allocate import Option, smallest, unit_for
from marco_gguf.quant.measure_types import CANDIDATES, fits, quantizable
from marco_gguf.quant.plan_model import Model, padded, token_share
from marco_gguf.quant.plan_target import Target, names_of


@dataclass(frozen=True)
class Costs:
    """The target in the allocator's terms: a byte budget for the quantized tensors, and how one is priced."""

    budget: int
    fixed: int  # what the header and the F32 tensors take from the target
    padded: bool  # a file size counts each tensor padded to the alignment; bits/weight does not
    unit: int

    def cost(self, spec: TensorSpec) -> int:
        return padded(spec.n_bytes) if self.padded else spec.n_bytes


def costs_of(model: Model, target: Target, header: int, quant: Sequence[PlannedTensor]) -> Costs:
    fixed = [TensorSpec(t.name, t.shape, Q.F32) for t in model.planned if not quantizable(t)]
    unit = unit_for(sum(TensorSpec(t.name, t.shape, Q.F16).n_bytes for t in quant))
    if target.size is not None:
        spent = header + sum(padded(s.n_bytes) for s in fixed)
        return Costs(target.size - spent, spent, True, unit)
    assert target.bpw is not None
    params = sum(t.n_elements for t in model.planned)
    spent = sum(s.n_bytes for s in fixed)
    return Costs(math.floor(target.bpw * params / 8) - spent, spent, False, unit)


def figure(model: Model, target: Target, costs: Costs, data_bytes: int) -> str:
    """A total in the target's own terms (file bytes, or bits per weight) for messages."""
    if target.size is not None:
        return f"{costs.fixed + data_bytes:,} bytes"
    return f"{8 * (costs.fixed + data_bytes) / sum(t.n_elements for t in model.planned):.3f} bits/weight"


def check_budget(
    model: Model,
    target: Target,
    costs: Costs,
    quant: Sequence[PlannedTensor],
    cands: dict[str, tuple[Q, ...]],
    chosen_types: bool,
) -> None:
    """Refuse, before measuring anything, a target the candidate types cannot meet or that needs no quantizing;
    `chosen_types`: the candidates are the user's --types, so IQ types are no remedy unless they add them."""
    what = f"--target-size {target.label}" if target.size is not None else f"--target-bpw {target.bpw:g}"
    f16 = sum(costs.cost(TensorSpec(t.name, t.shape, Q.F16)) for t in quant)
    if costs.budget > f16:
        raise PlanError(
            f"{what} is above the F16 file ({figure(model, target, costs, f16)}): there is nothing to quantize",
            "use --preset f16 (or bf16), or a smaller target",
        )
    least = least_bytes(costs, quant, lambda t: cands[t.name])
    if least <= costs.budget:
        return
    if model.importance is None and not chosen_types:
        with_iq = least_bytes(costs, quant, lambda t: tuple(q for q in CANDIDATES if fits(q, t.row_len)))
        if with_iq <= costs.budget:
            raise PlanError(
                f"{what} is below the smallest file without IQ types ({figure(model, target, costs, least)}): "
                "the plan needs IQ types, and the plan uses them only with an importance matrix",
                "pass --imatrix FILE or --calibrate, or give a larger target",
            )
    more = ", or add smaller types to --types" if chosen_types else ", or an imatrix for the IQ types"
    raise PlanError(
        f"{what} is below the smallest file these candidate types make "
        f"({figure(model, target, costs, least)}, every tensor at its smallest type)",
        "give a larger target" + ("" if model.importance and not chosen_types else more),
    )


def least_bytes(costs: Costs, quant: Sequence[PlannedTensor], types: Callable[[PlannedTensor], tuple[Q, ...]]) -> int:
    """The smallest tensor data the allocator can reach, in budget bytes (whole units, as it counts them)."""
    options = [[Option(q, costs.cost(TensorSpec(t.name, t.shape, q)), 0.0, 0.0) for q in types(t)] for t in quant]
    return smallest(options, costs.unit) * costs.unit


def check_candidates(quant: Sequence[PlannedTensor], cands: dict[str, tuple[Q, ...]], types: Sequence[Q]) -> None:
    for t in quant:
        if not cands[t.name]:
            raise PlanError(
                f"--types {names_of(types)}: none fits {t.name} (rows of {t.row_len}, "
                "not a whole number of the types' blocks)",
                "add a type with 32-wide blocks such as q8_0, q5_0 or q4_0",
            )


def token_fixed(model: Model) -> float:
    """Bytes per token the F32 tensors (norms, routers) read: all of them."""
    return sum(TensorSpec(t.name, t.shape, Q.F32).n_bytes for t in model.planned if not quantizable(t))


def check_token_cap(model: Model, quant: Sequence[PlannedTensor], cands: dict[str, tuple[Q, ...]], cap: int) -> None:
    least = token_fixed(model) + sum(
        min(TensorSpec(t.name, t.shape, q).n_bytes for q in cands[t.name]) * token_share(t, model.config, model.tied)
        for t in quant
    )
    if cap < least:
        raise PlanError(
            f"--max-bytes-per-token {cap:,} is below the least these candidate types read per token ({least:,.0f})",
            "give a larger cap, or smaller --types",
        )
