"""`convert --target-size / --target-bpw`: each tensor's type chosen by measured error to fit a budget.

Three steps, each its own module: measure every (tensor, candidate type) error on sampled rows
(measure_types, cached by measure_cache), spend the budget (allocate), write the plan as a preset
(plan_file). This module checks the target against what the candidate types can make before anything is
measured or written, and prices the plan and the fixed presets alike for the summary.

Budgets: `--target-size` bounds the whole file (header, padding and F32 tensors included); `--target-bpw`
bounds bits per weight as ConvertResult reports it (8 x tensor data bytes / parameters, F32 tensors
included). `--max-bytes-per-token` bounds the weight bytes one generated token reads (arch.bytes_per_token).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gguf import MODEL_TENSOR as T
from gguf import GGMLQuantizationType as Q

from marco_gguf.arch.qwen3moe import PlannedTensor
from marco_gguf.base.errors import PlanError
from marco_gguf.base.progress import Progress
from marco_gguf.gguf_io.writer import TensorSpec
from marco_gguf.quant import measure_cache
from marco_gguf.quant.allocate import Option, allocate, smallest, total_error, unit_for
from marco_gguf.quant.measure_types import (
    CANDIDATES,
    SAMPLE_ROWS,
    SAMPLE_SEED,
    candidate_types,
    fits,
    measure,
    quantizable,
    tensor_weights,
)
from marco_gguf.quant.plan_file import plan_preset
from marco_gguf.quant.plan_model import (
    Model,
    Priced,
    fixed_presets,
    neighbours,
    padded,
    price,
    token_share,
)
from marco_gguf.quant.plan_target import Target, names_of, parse_target, parse_types
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

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    preset: Preset
    header: tuple[str, ...]  # the comment lines of its TOML file
    summary: PlanSummary
    errors: dict[str, dict[str, float]] = field(repr=False)


@dataclass(frozen=True)
class _Costs:
    """The target in the allocator's terms: a byte budget for the quantized tensors, and how one is priced."""

    budget: int
    fixed: int  # what the header and the F32 tensors take from the target
    padded: bool  # a file size counts each tensor padded to the alignment; bits/weight does not
    unit: int

    def cost(self, spec: TensorSpec) -> int:
        return padded(spec.n_bytes) if self.padded else spec.n_bytes


def _costs(model: Model, target: Target, header: int, quant: Sequence[PlannedTensor]) -> _Costs:
    fixed = [TensorSpec(t.name, t.shape, Q.F32) for t in model.planned if not quantizable(t)]
    unit = unit_for(sum(TensorSpec(t.name, t.shape, Q.F16).n_bytes for t in quant))
    if target.size is not None:
        spent = header + sum(padded(s.n_bytes) for s in fixed)
        return _Costs(target.size - spent, spent, True, unit)
    assert target.bpw is not None
    params = sum(t.n_elements for t in model.planned)
    spent = sum(s.n_bytes for s in fixed)
    return _Costs(math.floor(target.bpw * params / 8) - spent, spent, False, unit)


def _figure(model: Model, target: Target, costs: _Costs, data_bytes: int) -> str:
    """A total in the target's own terms (file bytes, or bits per weight) for messages."""
    if target.size is not None:
        return f"{costs.fixed + data_bytes:,} bytes"
    return f"{8 * (costs.fixed + data_bytes) / sum(t.n_elements for t in model.planned):.3f} bits/weight"


def _check_budget(
    model: Model,
    target: Target,
    costs: _Costs,
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
            f"{what} is above the F16 file ({_figure(model, target, costs, f16)}): there is nothing to quantize",
            "use --preset f16 (or bf16), or a smaller target",
        )
    least = _least(costs, quant, lambda t: cands[t.name])
    if least <= costs.budget:
        return
    if model.importance is None and not chosen_types:
        with_iq = _least(costs, quant, lambda t: tuple(q for q in CANDIDATES if fits(q, t.row_len)))
        if with_iq <= costs.budget:
            raise PlanError(
                f"{what} is below the smallest file without IQ types ({_figure(model, target, costs, least)}): "
                "the plan needs IQ types, and the plan uses them only with an importance matrix",
                "pass --imatrix FILE or --calibrate, or give a larger target",
            )
    more = ", or add smaller types to --types" if chosen_types else ", or an imatrix for the IQ types"
    raise PlanError(
        f"{what} is below the smallest file these candidate types make "
        f"({_figure(model, target, costs, least)}, every tensor at its smallest type)",
        "give a larger target" + ("" if model.importance and not chosen_types else more),
    )


def _least(costs: _Costs, quant: Sequence[PlannedTensor], types: Callable[[PlannedTensor], tuple[Q, ...]]) -> int:
    """The smallest tensor data the allocator can reach, in budget bytes (whole units, as it counts them)."""
    options = [[Option(q, costs.cost(TensorSpec(t.name, t.shape, q)), 0.0, 0.0) for q in types(t)] for t in quant]
    return smallest(options, costs.unit) * costs.unit


def _check_candidates(quant: Sequence[PlannedTensor], cands: dict[str, tuple[Q, ...]], types: Sequence[Q]) -> None:
    for t in quant:
        if not cands[t.name]:
            raise PlanError(
                f"--types {names_of(types)}: none fits {t.name} (rows of {t.row_len}, "
                "not a whole number of the types' blocks)",
                "add a type with 32-wide blocks such as q8_0, q5_0 or q4_0",
            )


def _token_fixed(model: Model) -> float:
    """Bytes per token the F32 tensors (norms, routers) read: all of them."""
    return sum(TensorSpec(t.name, t.shape, Q.F32).n_bytes for t in model.planned if not quantizable(t))


def _check_token_cap(model: Model, quant: Sequence[PlannedTensor], cands: dict[str, tuple[Q, ...]], cap: int) -> None:
    least = _token_fixed(model) + sum(
        min(TensorSpec(t.name, t.shape, q).n_bytes for q in cands[t.name]) * token_share(t, model.config, model.tied)
        for t in quant
    )
    if cap < least:
        raise PlanError(
            f"--max-bytes-per-token {cap:,} is below the least these candidate types read per token ({least:,.0f})",
            "give a larger cap, or smaller --types",
        )


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


def _option(model: Model, costs: _Costs, t: PlannedTensor, q: Q, errors: dict[str, dict[str, float]]) -> Option:
    spec = TensorSpec(t.name, t.shape, q)
    share = token_share(t, model.config, model.tied)
    return Option(q, costs.cost(spec), spec.n_bytes * share, errors[t.name][q.name])


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


GAINED = ", each tensor's weighed by its measured sensitivity: estimated KLD"
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
    _check_candidates(quant, cands, kinds)
    imatrix_sha = measure_cache.file_sha256(model.importance.path) if model.importance is not None else None
    fields = _fields(model, target, kinds, max_bytes_per_token, imatrix_sha)
    header = model.header_bytes(
        plan_preset(target.name, model.planned, {t.name: cands[t.name][0] for t in quant}, fields, "")
    )
    costs = _costs(model, target, header, quant)
    _check_budget(model, target, costs, quant, cands, chosen_types=bool(types))
    if max_bytes_per_token is not None:
        _check_token_cap(model, quant, cands, max_bytes_per_token)
    if model.sensitivity is not None:
        check_model(model.sensitivity, quant)
    gains: tuple[int | None, str | None] = (None, None)
    errors, measured, cached, path, key = _measure(model, quant, cands, imatrix_sha, cache, threads, progress)
    if model.sensitivity is not None:  # the plan, its summary and the presets' estimates all in KLD units
        sens = sensitivity(
            model.sensitivity, quant, errors, measure_key=key, cache=cache, threads=threads, progress=progress
        )
        errors = {n: {q: sens.gains[n] * e for q, e in by_type.items()} for n, by_type in errors.items()}
        gains = (sens.measured, str(sens.cache))
    cap = None if max_bytes_per_token is None else max_bytes_per_token - _token_fixed(model) - 1
    options = [[_option(model, costs, t, q, errors) for q in cands[t.name]] for t in quant]
    picked = allocate(options, costs.budget, unit=costs.unit, max_token_bytes=cap)
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
        *gains,
    )
    return Plan(preset, _header_lines(model, target, fields, priced), summary, errors)


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
