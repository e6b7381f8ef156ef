"""`convert --target-size / --target-bpw`: each tensor's type chosen by measured error to fit a budget.

The steps, each its own module: measure every (tensor, candidate type) error on sampled rows
(measure_types, cached by measure_cache); with a sensitivity GGUF, weigh each error by its tensor's measured
gain (sensitivity) and, after a first plan, correct the gains by group at that plan's types (joint); spend the
budget (allocate); write the plan as a preset (plan_file). The target is checked against what the candidate
types can make before anything is measured or written (plan_checks); this module prices the plan and the fixed
presets alike for the summary.

Budgets: `--target-size` bounds the whole file (header, padding and F32 tensors included); `--target-bpw`
bounds bits per weight as ConvertResult reports it (8 x tensor data bytes / parameters, F32 tensors
included). `--max-bytes-per-token` bounds the weight bytes one generated token reads (arch.bytes_per_token).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gguf import MODEL_TENSOR as T
from gguf import GGMLQuantizationType as Q

from marco_gguf.arch.qwen3moe import PlannedTensor
from marco_gguf.base.errors import PlanError
from marco_gguf.base.progress import Progress
from marco_gguf.gguf_io.writer import TensorSpec
from marco_gguf.quant import measure_cache
from marco_gguf.quant.allocate import Option, allocate, total_error
from marco_gguf.quant.joint import corrected, measure_groups
from marco_gguf.quant.measure_types import (
    SAMPLE_ROWS,
    SAMPLE_SEED,
    candidate_types,
    measure,
    quantizable,
    tensor_weights,
)
from marco_gguf.quant.plan_checks import Costs, check_budget, check_candidates, check_token_cap, costs_of, token_fixed
from marco_gguf.quant.plan_file import plan_preset
from marco_gguf.quant.plan_model import (
    Model,
    Priced,
    fixed_presets,
    neighbours,
    price,
    token_share,
)
from marco_gguf.quant.plan_target import Target, parse_target, parse_types
from marco_gguf.quant.presets import Preset
from marco_gguf.quant.sensitivity import check_model, sensitivity
from marco_gguf.version import __version__

__all__ = ["Model", "Plan", "PlanSummary", "Target", "make_plan", "parse_target"]


@dataclass(frozen=True)
class PlanSummary:
    target: str
    budget_bytes: int  # the file size, or for a bits/weight target the tensor data bytes, not to exceed
    objective: str
    plan: Priced
    neighbours: tuple[Priced, ...]  # the fixed presets just below and above the plan's size
    presets: tuple[Priced, ...]  # every fixed preset this model can be made with here, by size
    types: dict[str, int]  # GGML type -> tensors
    measured: int  # (tensor, type) errors measured now
    cached: int  # ... and read from the cache
    cache: str
    seconds: float
    gains_measured: int | None = None  # with a sensitivity GGUF: tensors whose gain was measured now
    gains_cache: str | None = None  # ... the file the gains are kept in
    groups: tuple[dict, ...] | None = None  # ... each group's KLD noised at once at the first plan's types
    replanned: bool | None = None  # ... whether the gains corrected by group changed the plan

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    preset: Preset
    header: tuple[str, ...]  # the comment lines of its TOML file
    summary: PlanSummary
    errors: dict[str, dict[str, float]] = field(repr=False)


def _measure(
    model: Model,
    quant: Sequence[PlannedTensor],
    cands: dict[str, tuple[Q, ...]],
    imatrix_sha: str | None,
    cache: tuple[Path, str],
    threads: int,
    progress: Progress | None,
) -> tuple[dict[str, dict[str, float]], int, int, Path, str]:
    """Every (tensor, candidate) error, from the cache where it has them: (errors, measured, cached, cache file,
    its key)."""
    source = measure_cache.source_identity(model.folder, model.planned, model.files, model.read_rows)
    key = measure_cache.cache_key(source, imatrix_sha, SAMPLE_ROWS, SAMPLE_SEED)
    path = measure_cache.cache_path(*cache, key)
    known = measure_cache.load(path, key)
    norm = next(t for t in model.planned if t.kind == T.OUTPUT_NORM).pieces[0]
    final_norm = model.read_rows(norm.source, norm.start, norm.count).reshape(-1)
    jobs = [
        (
            t,
            tensor_weights(
                t, model.importance, experts_used=model.config.n_experts_used, tied=model.tied, final_norm=final_norm
            ),
            cands[t.name],
        )
        for t in quant
    ]
    cached = sum(1 for t in quant for q in cands[t.name] if q.name in known.get(t.name, {}))
    errors = measure(jobs, model.read_rows, threads=threads, known=known, progress=progress)
    measured = sum(len(cands[t.name]) for t in quant) - cached
    if measured:
        merged = {n: {**known.get(n, {}), **e} for n, e in errors.items()}
        measure_cache.save(path, key, {**known, **merged})
    return errors, measured, cached, path, key


def _fields(model: Model, target: Target, types: Sequence[Q], cap: int | None, imatrix_sha: str | None) -> dict:
    """The [plan] table (quantize.plan.* keys); every value but estimated_error is known before measuring, and
    estimated_error is a float64 either way, so the header's length is known before the plan is."""
    params = sum(t.n_elements for t in model.planned)
    budget = target.size if target.size is not None else math.floor((target.bpw or 0) * params / 8)
    imatrix = "none"
    if model.importance is not None:
        imatrix = f"{Path(model.imatrix_label or model.importance.path).name} sha256:{imatrix_sha}"
    fields: dict = {"target": target.label, "budget_bytes": budget}
    if cap is not None:
        fields["max_bytes_per_token"] = cap
    return fields | {
        "objective": OBJECTIVE[model.importance is not None] + (GAINED if model.sensitivity is not None else ""),
        "estimated_error": 0.0,
        "imatrix": imatrix,
        **({"sensitivity": model.sensitivity.name} if model.sensitivity is not None else {}),
        "types": [q.name for q in types],
        "sample_rows": SAMPLE_ROWS,
        "version": __version__,
    }


GAINED = ", each tensor's weighed by its measured sensitivity, corrected by group at the plan's types: estimated KLD"
OBJECTIVE = {
    True: "least total imatrix-weighted squared error (expected per token, routed experts by their share)",
    False: "least total squared error (no imatrix; routed experts by their uniform share)",
}


def make_plan(
    model: Model,
    target: Target,
    *,
    types: Sequence[str] | None = None,
    max_bytes_per_token: int | None = None,
    cache: tuple[Path, str],
    threads: int,
    progress: Progress | None = None,
) -> Plan:
    """Measure (or read from the cache in folder `cache[0]`, files named after `cache[1]`) every candidate's
    error, then choose one type per tensor: the least total error within the target and the cap."""
    started = time.perf_counter()
    kinds = parse_types(types, imatrix=model.importance is not None)
    quant = [t for t in model.planned if quantizable(t)]
    cands = {t.name: candidate_types(t, kinds, importance=model.importance) for t in quant}
    check_candidates(quant, cands, kinds)
    imatrix_sha = measure_cache.file_sha256(model.importance.path) if model.importance is not None else None
    fields = _fields(model, target, kinds, max_bytes_per_token, imatrix_sha)
    header = model.header_bytes(
        plan_preset(target.name, model.planned, {t.name: cands[t.name][0] for t in quant}, fields, "")
    )
    costs = costs_of(model, target, header, quant)
    check_budget(model, target, costs, quant, cands, chosen_types=bool(types))
    if max_bytes_per_token is not None:
        check_token_cap(model, quant, cands, max_bytes_per_token)
    if model.sensitivity is not None:
        check_model(model.sensitivity, quant)
    errors, measured, cached, path, key = _measure(model, quant, cands, imatrix_sha, cache, threads, progress)
    cap = None if max_bytes_per_token is None else max_bytes_per_token - token_fixed(model) - 1
    plan = _Allocation(model, costs, quant, cands, cap)
    extra: dict[str, Any] = {}  # the summary's fields of a plan weighed by sensitivity
    if model.sensitivity is None:
        picked = plan.allocate(errors)
    else:  # the plan, its summary and the presets' estimates all in KLD units
        errors, picked, extra = _weighed(model, plan, errors, key, cache, threads, progress)
    chosen = {t.name: o.type for t, o in zip(quant, picked, strict=True)}
    fields["estimated_error"] = float(total_error(picked))
    priced = price(model, target.name, chosen, header, errors)
    preset = plan_preset(target.name, model.planned, chosen, fields, _description(target, priced, model))
    if model.header_bytes(preset) != header:
        raise PlanError("internal error: the plan's header changed length after planning")
    presets = fixed_presets(model, errors)
    summary = PlanSummary(
        target.label,
        fields["budget_bytes"],
        fields["objective"],
        priced,
        neighbours(priced, presets),
        presets,
        _count(chosen.values()),
        measured,
        cached,
        str(path),
        time.perf_counter() - started,
        **extra,
    )
    return Plan(preset, _header_lines(model, target, fields, priced), summary, errors)


class _Allocation:
    """One budget's allocation problem: each candidate's bytes (against the budget, and read per token) priced
    once; the errors come per call, so a plan weighed and then corrected by group is allocated twice."""

    def __init__(
        self,
        model: Model,
        costs: Costs,
        quant: Sequence[PlannedTensor],
        cands: dict[str, tuple[Q, ...]],
        cap: float | None,
    ) -> None:
        self.quant, self.budget, self.unit, self.cap = quant, costs.budget, costs.unit, cap
        self.priced = [[_priced(model, costs, t, q) for q in cands[t.name]] for t in quant]

    def allocate(self, errors: dict[str, dict[str, float]]) -> list[Option]:
        options = [
            [Option(q, cost, token, errors[t.name][q.name]) for q, cost, token in row]
            for t, row in zip(self.quant, self.priced, strict=True)
        ]
        return allocate(options, self.budget, unit=self.unit, max_token_bytes=self.cap)


def _priced(model: Model, costs: Costs, t: PlannedTensor, q: Q) -> tuple[Q, int, float]:
    """A candidate's bytes against the budget and its bytes read per generated token."""
    spec = TensorSpec(t.name, t.shape, q)
    return q, costs.cost(spec), spec.n_bytes * token_share(t, model.config, model.tied)


def _weighed(
    model: Model,
    plan: _Allocation,
    errors: dict[str, dict[str, float]],
    key: str,
    cache: tuple[Path, str],
    threads: int,
    progress: Progress | None,
) -> tuple[dict[str, dict[str, float]], list[Option], dict[str, Any]]:
    """Errors in KLD units (each tensor's by its measured gain), planned, the gains corrected by group at that
    plan's types (quant/joint.py) and planned again: (weighed errors, the plan, the summary's fields)."""
    assert model.sensitivity is not None
    sens = sensitivity(
        model.sensitivity, plan.quant, errors, measure_key=key, cache=cache, threads=threads, progress=progress
    )
    first = plan.allocate(_times(errors, sens.gains))
    chosen = {t.name: o.type for t, o in zip(plan.quant, first, strict=True)}
    found = measure_groups(
        model.sensitivity,
        chosen,
        errors,
        sens.gains,
        cache=cache,
        gains_key=sens.key,
        threads=threads,
        progress=progress,
    )
    weighed = _times(errors, corrected(sens.gains, found))
    picked = plan.allocate(weighed)
    extra = {
        "gains_measured": sens.measured,
        "gains_cache": str(sens.cache),
        "groups": tuple(g.as_dict() for g in found),
        "replanned": [o.type for o in picked] != [o.type for o in first],
    }
    return weighed, picked, extra


def _times(errors: dict[str, dict[str, float]], gains: dict[str, float]) -> dict[str, dict[str, float]]:
    return {n: {q: gains[n] * e for q, e in by_type.items()} for n, by_type in errors.items()}


def _count(types: Iterable[Q]) -> dict[str, int]:
    out: dict[str, int] = {}
    for q in types:
        out[q.name] = out.get(q.name, 0) + 1
    return dict(sorted(out.items()))


def _description(target: Target, priced: Priced, model: Model) -> str:
    how = "imatrix-weighted" if model.importance is not None else "plain"
    return f"Planned for {target.label}: {priced.bits_per_weight:.2f} bits/weight, types by measured {how} error."


def _header_lines(model: Model, target: Target, fields: dict, priced: Priced) -> tuple[str, ...]:
    what = (
        f"--target-size {target.label} (the whole file at most {fields['budget_bytes']:,} bytes)"
        if target.size is not None
        else f"--target-bpw {target.bpw:g} (tensor data at most {fields['budget_bytes']:,} bytes)"
    )
    cap = fields.get("max_bytes_per_token")
    again = f" --imatrix {Path(model.imatrix_label or '').name or 'IMATRIX'}" if model.importance is not None else ""
    return (
        f"marco-gguf quantization plan {target.name} for {model.folder.name}, made by marco-gguf {fields['version']}",
        f"budget: {what}" + (f", at most {cap:,} bytes read per token" if cap is not None else ""),
        f"planned: {priced.size_bytes:,} bytes, {priced.bits_per_weight:.3f} bits/weight, "
        f"{priced.bytes_per_token:,} bytes per token",
        f"objective: {fields['objective']}",
        f"  on {fields['sample_rows']} sampled rows per tensor; estimated total {fields['estimated_error']:.6g}",
        f"imatrix: {fields['imatrix']}",
        *(
            [f"sensitivity: measured on {fields['sensitivity']} (quant/sensitivity.py)"]
            if "sensitivity" in fields
            else []
        ),
        f"candidate types: {', '.join(fields['types'])}",
        "An ordinary preset: every quantized tensor has a rule. The same file again, byte for byte:",
        f"  marco-gguf convert SOURCE --preset THIS_FILE.toml{again}",
    )
