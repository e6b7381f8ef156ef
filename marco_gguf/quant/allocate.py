"""Spending a byte budget: one type per tensor, least total estimated error, optionally a cap on the bytes one
generated token reads.

llama.cpp PR #15550 keeps each tensor's convex hull of (bytes, error) and bisects a Lagrange multiplier, which
can leave up to one hull step of a large tensor unspent. Here the byte budget is solved exactly, up to a
fixed byte unit, by dynamic programming over the tensors (a multiple-choice knapsack): every option's bytes
are rounded up to whole units, so the plan never exceeds the budget, and at most one unit per tensor is lost
to rounding. The unit depends only on the model (its F16 size / CAPACITY_STEPS), never on the budget, so
the optimum over a larger budget's choices includes every smaller budget's plan: more bytes never give a
larger total error. Each tensor keeps only its Pareto-optimal options (no cheaper option with at most its
error). The bytes-per-token cap is the second constraint and is met with a Lagrange multiplier on it
(bisected, deterministic), as PR #15550 does for its one constraint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as Q

CAPACITY_STEPS = 1 << 18  # budget resolution: F16 size / 2^18 (Marco-Mini: 132 kB a unit, 26 MB at most lost)
BISECTION_STEPS = 40


@dataclass(frozen=True)
class Option:
    """One type for one tensor: its bytes against the budget, bytes read per token, estimated error."""

    type: Q
    cost: int
    token_bytes: float
    error: float


def pareto(options: Sequence[Option]) -> tuple[Option, ...]:
    """Options no cheaper-or-equal option beats on error, cheapest first (ties keep the earlier option)."""
    kept: list[Option] = []
    for o in sorted(options, key=lambda o: (o.cost, o.error)):
        if not kept or o.error < kept[-1].error:
            kept.append(o)
    return tuple(kept)


def unit_for(full_bytes: int) -> int:
    return max(1, -(-full_bytes // CAPACITY_STEPS))


def _solve(options: Sequence[tuple[Option, ...]], units: int, unit: int, mu: float) -> list[Option]:
    """Min of sum(error + mu * token_bytes) with sum(ceil(cost / unit)) <= units, by DP over capacity."""
    best = np.zeros(units + 1)
    choice = np.zeros((len(options), units + 1), dtype=np.uint8)
    for i, opts in enumerate(options):
        new = np.full(units + 1, np.inf)
        for k, o in enumerate(opts):
            w = -(-o.cost // unit)
            if w > units:
                continue
            cand = best[: units + 1 - w] + (o.error + mu * o.token_bytes)
            better = cand < new[w:]
            new[w:][better] = cand[better]
            choice[i, w:][better] = k
        best = new
    if not np.isfinite(best[units]):
        raise ValueError("budget below the smallest choice")  # callers check feasibility first
    plan, c = [], units
    for i in range(len(options) - 1, -1, -1):
        o = options[i][choice[i, c]]
        plan.append(o)
        c -= -(-o.cost // unit)
    return plan[::-1]


def smallest(options: Sequence[Sequence[Option]], unit: int) -> int:
    """Budget units the cheapest plan needs (each tensor's cheapest option, rounded up as the DP counts it)."""
    return sum(min(-(-o.cost // unit) for o in opts) for opts in options)


def allocate(
    options: Sequence[Sequence[Option]],
    budget: int,
    *,
    unit: int,
    max_token_bytes: float | None = None,
) -> list[Option]:
    """The plan: one option per tensor, least total error with sum of costs <= budget and, when given,
    sum of token bytes <= max_token_bytes. Callers check that the cheapest plan fits both."""
    opts = [pareto(o) for o in options]
    units = budget // unit
    plan = _solve(opts, units, unit, 0.0)
    if max_token_bytes is None or _tokens(plan) <= max_token_bytes:
        return plan
    lo, hi = 0.0, max(total_error(plan), 1e-300) / max(_tokens(plan), 1.0) * 1e-6
    while _tokens(_solve(opts, units, unit, hi)) > max_token_bytes:
        lo, hi = hi, hi * 2
        if hi > 1e300:
            raise ValueError("bytes-per-token cap below the cheapest plan")  # callers check first
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        if _tokens(_solve(opts, units, unit, mid)) > max_token_bytes:
            lo = mid
        else:
            hi = mid
    return _solve(opts, units, unit, hi)


def _tokens(plan: Sequence[Option]) -> float:
    return sum(o.token_bytes for o in plan)


def total_error(plan: Sequence[Option]) -> float:
    return sum(o.error for o in plan)
