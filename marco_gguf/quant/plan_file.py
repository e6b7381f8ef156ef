"""A plan as data: an ordinary preset (explicit rules per tensor kind and layer) plus a `[plan]` table that
says how it was made. `convert --preset plan.toml` reads it back like any preset and, from the `[plan]` table,
writes the same `quantize.plan.*` keys, so the file it makes is the planned file byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping, Sequence
from types import MappingProxyType
from typing import Any

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType as F

from marco_gguf.arch.qwen3moe import KINDS, PlannedTensor, base_name
from marco_gguf.gguf_io.format import row_size
from marco_gguf.gguf_io.info import PLAN_PREFIX
from marco_gguf.quant.presets import Preset, Rule

PLAN_KEY_PREFIX = PLAN_PREFIX  # inspect and card read the keys back under the same prefix
# llama.cpp's own guess of a file type from its most common tensor type (src/llama-model-loader.cpp); a plan
# declares the file type of the type that holds most of its bytes
FILE_TYPE_OF: Mapping[Q, F] = MappingProxyType(
    {
        Q.F16: F.MOSTLY_F16,
        Q.BF16: F.MOSTLY_BF16,
        Q.Q4_0: F.MOSTLY_Q4_0,
        Q.Q4_1: F.MOSTLY_Q4_1,
        Q.Q5_0: F.MOSTLY_Q5_0,
        Q.Q5_1: F.MOSTLY_Q5_1,
        Q.Q8_0: F.MOSTLY_Q8_0,
        Q.Q2_K: F.MOSTLY_Q2_K,
        Q.Q3_K: F.MOSTLY_Q3_K_M,
        Q.Q4_K: F.MOSTLY_Q4_K_M,
        Q.Q5_K: F.MOSTLY_Q5_K_M,
        Q.Q6_K: F.MOSTLY_Q6_K,
        Q.IQ2_XXS: F.MOSTLY_IQ2_XXS,
        Q.IQ2_XS: F.MOSTLY_IQ2_XS,
        Q.IQ2_S: F.MOSTLY_IQ2_S,
        Q.IQ3_XXS: F.MOSTLY_IQ3_XXS,
        Q.IQ3_S: F.MOSTLY_IQ3_S,
        Q.IQ4_NL: F.MOSTLY_IQ4_NL,
        Q.IQ4_XS: F.MOSTLY_IQ4_XS,
    }
)


def plan_preset(
    name: str,
    planned: Sequence[PlannedTensor],
    chosen: Mapping[str, Q],
    plan: Mapping[str, Any],
    description: str,
) -> Preset:
    """The preset that gives every quantized tensor its planned type: one rule per (kind, type) naming the
    layers, "all" when every layer of the kind has that type. The default type (never used: every tensor
    has a rule) and the file type are those of the type that holds most bytes."""
    by_type: dict[Q, int] = {}
    for t in planned:
        if t.name in chosen:
            q = chosen[t.name]
            by_type[q] = by_type.get(q, 0) + t.n_rows * row_size(q, t.row_len)
    main = max(by_type, key=lambda q: (by_type[q], -list(Q).index(q)))
    rules = []
    for kind in KINDS:
        of_kind = [t for t in planned if base_name(t.name) == kind.gguf and t.name in chosen]
        for q in sorted({chosen[t.name] for t in of_kind}, key=lambda q: -list(Q).index(q)):
            layers = [t.layer for t in of_kind if chosen[t.name] == q and t.layer is not None]
            whole = all(chosen[t.name] == q for t in of_kind)
            rules.append(Rule((kind.gguf,), q, "all" if whole else tuple(sorted(layers))))
    return Preset(
        name.lower(), name, FILE_TYPE_OF[main], main, description, tuple(rules), plan=MappingProxyType(dict(plan))
    )


def plan_kv(plan: Mapping[str, Any]) -> dict[str, gguf.GGUFValue]:
    """The `[plan]` table as GGUF keys: strings, u64 counts, f64 figures, string arrays."""
    V, out = gguf.GGUFValueType, {}
    for key, value in plan.items():
        if isinstance(value, str):
            out[PLAN_KEY_PREFIX + key] = gguf.GGUFValue(value, V.STRING)
        elif isinstance(value, float):
            out[PLAN_KEY_PREFIX + key] = gguf.GGUFValue(value, V.FLOAT64)
        elif isinstance(value, int):
            out[PLAN_KEY_PREFIX + key] = gguf.GGUFValue(value, V.UINT64)
        else:
            out[PLAN_KEY_PREFIX + key] = gguf.GGUFValue(list(value), V.ARRAY, V.STRING)
    return out


def add_plan_keys(kv: MutableMapping[str, Any], preset: Preset) -> None:
    kv.update(plan_kv(preset.plan))


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string of BMP text is a TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest repr: reads back as the same float64
    if isinstance(value, int):
        return str(value)
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def render_toml(preset: Preset, header: Sequence[str]) -> str:
    """The preset file: comment lines, the preset's fields, one [[rules]] table per rule, the [plan] table."""
    lines = (
        [f"# {h}".rstrip() for h in header]
        + [""] * bool(header)
        + [
            f"name = {_toml_value(preset.name)}",
            f"file_type = {_toml_value(preset.file_type.name)}",
            f"default_type = {_toml_value(preset.default_type.name)}",
            f"description = {_toml_value(preset.description)}",
        ]
    )
    for r in preset.rules:
        layers = r.layers if isinstance(r.layers, str) else list(r.layers)
        lines += ["", "[[rules]]", f"tensors = {_toml_value(list(r.tensors))}", f"type = {_toml_value(r.type.name)}"]
        lines.append(f"layers = {_toml_value(layers)}")
    lines += ["", "[plan]"] + [f"{k} = {_toml_value(v)}" for k, v in preset.plan.items()]
    return "\n".join(lines) + "\n"


def is_bpw_target(label: str) -> bool:
    return label.upper().endswith("BPW")


def _fmt(value: Any, spec: str) -> str:
    """A figure formatted, or the value as it is: inspect shows any file's keys, hand-edited ones included."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return format(value, spec) if is_number else str(value)


def _budget(plan: Mapping[str, Any]) -> str:
    """'3MB (the whole file at most 3,000,000 bytes)'; a bits/weight target bounds the tensor data."""
    target, budget = plan.get("target", "an unrecorded target"), plan.get("budget_bytes")
    if budget is None:
        return str(target)
    whole = "tensor data" if is_bpw_target(str(target)) else "the whole file"
    return f"{target} ({whole} at most {_fmt(budget, ',')} bytes)"


def describe_plan(plan: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A file's or preset's [plan] table as (field, value) lines for people, in PLAN_FIELDS' order; fields this
    version does not know follow as they are."""
    rows: list[tuple[str, str]] = [("budget", _budget(plan))]
    if "max_bytes_per_token" in plan:
        rows.append(
            ("bytes per token", f"at most {_fmt(plan['max_bytes_per_token'], ',')} weight bytes read per token")
        )
    if "objective" in plan:
        rows.append(("objective", str(plan["objective"])))
    if "estimated_error" in plan:
        on = f" (on {plan['sample_rows']} sampled rows per tensor)" if "sample_rows" in plan else ""
        rows.append(("estimated error", f"{_fmt(plan['estimated_error'], '.6g')}{on}"))
    if "imatrix" in plan:
        rows.append(("imatrix", str(plan["imatrix"])))
    if "sensitivity" in plan:
        rows.append(("sensitivity", f"gains measured on {plan['sensitivity']}"))
    if "types" in plan:
        types = plan["types"]
        rows.append(("candidate types", ", ".join(map(str, types)) if isinstance(types, list) else str(types)))
    if "version" in plan:
        rows.append(("planned by", f"marco-gguf {plan['version']}"))
    known = {"target", "budget_bytes", "max_bytes_per_token", "objective", "estimated_error", "sample_rows"}
    known |= {"imatrix", "sensitivity", "types", "version"}
    rows += [(k, ", ".join(map(str, v)) if isinstance(v, list) else str(v)) for k, v in plan.items() if k not in known]
    return rows


def plan_sentence(plan: Mapping[str, Any]) -> str:
    """One sentence for a model card: the budget the file was planned for, the objective, the estimated error."""
    cap = plan.get("max_bytes_per_token")
    said = [f"Planned for a budget of {_budget(plan)}"]
    if cap is not None:
        said.append(f", at most {_fmt(cap, ',')} weight bytes read per token")
    if "objective" in plan:
        said.append(f"; types chosen for the {plan['objective']}")
    if "estimated_error" in plan:
        said.append(f", estimated {_fmt(plan['estimated_error'], '.6g')}")
    return "".join(said) + "."
