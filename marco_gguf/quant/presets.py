"""Quantization presets: `quant_presets/*.toml` (or a user's file) -> one GGML type per tensor.

A preset is data: a default type, ordered rules (tensor names x layer selection -> type, first match
wins) and fallbacks for rows whose length is not a multiple of the type's block size. What is never
quantized (1-D tensors, norms, the router) is llama.cpp's invariant, not a preset choice.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import gguf
from gguf import MODEL_TENSOR as T
from gguf import GGMLQuantizationType as Q

from marco_gguf.arch.qwen3moe import PlannedTensor, base_name
from marco_gguf.base.errors import PresetError

# named layer selections; source: llama.cpp src/llama-quant.cpp (use_more_bits and the n_layer/8 cut-offs)
LAYER_SELECTORS: Mapping[str, Callable[[int, int], bool]] = MappingProxyType(
    {
        "all": lambda i, n: True,
        "more_bits": lambda i, n: i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2,
        "first_eighth": lambda i, n: i < n // 8,
        "first_sixteenth": lambda i, n: i < n // 16,
    }
)
# tensors llama.cpp never quantizes, whatever the preset (llama-quant.cpp tensor_allows_quantization)
ALWAYS_F32: frozenset[T] = frozenset(
    {T.FFN_GATE_INP, T.ATTN_NORM, T.FFN_NORM, T.ATTN_Q_NORM, T.ATTN_K_NORM, T.OUTPUT_NORM}
)
PRESET_DIRS = ("quant_presets",)  # packaged as marco_gguf/quant_presets, or the repo's top-level folder
WRITABLE_TYPES: frozenset[Q] = frozenset(
    {
        Q.F32,
        Q.F16,
        Q.BF16,
        Q.Q8_0,
        Q.Q4_0,
        Q.Q4_1,
        Q.Q5_0,
        Q.Q5_1,
        Q.Q2_K,
        Q.Q3_K,
        Q.Q4_K,
        Q.Q5_K,
        Q.Q6_K,
        Q.IQ4_NL,
        Q.IQ4_XS,
        Q.IQ3_S,
        Q.IQ3_XXS,
        Q.IQ2_S,
        Q.IQ2_XS,
        Q.IQ2_XXS,
    }
)
# types whose tensors llama-quantize refuses to make without an imatrix (llama-quant.cpp tensor_requires_imatrix;
# ggml_quantize_requires_imatrix, a subset, would abort the process); token_embd and output are exempt
NEEDS_IMATRIX: frozenset[Q] = frozenset({Q.IQ3_XXS, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ1_M, Q.IQ1_S})
IMATRIX_EXEMPT = ("token_embd.weight", "output.weight")


@dataclass(frozen=True)
class Rule:
    """Tensors named in `tensors` on the selected layers get `type` (first matching rule wins)."""

    tensors: tuple[str, ...]
    type: Q
    layers: str | tuple[int, ...] = "all"
    tied_only: bool = False
    experts: int | None = None  # only for models with exactly this many experts (llama.cpp's n_expert == 8 rules)
    min_experts: int | None = None  # only with at least this many experts (n_expert >= 4)
    min_gqa: int | None = None  # only when n_head / n_head_kv is at least this (n_gqa() >= 4)
    imatrix: bool | None = None  # only with (true) or without (false) an importance matrix (has_imatrix)

    def matches(
        self, t: PlannedTensor, n_layers: int, tied: bool, n_experts: int, *, n_gqa: int = 1, imatrix: bool = False
    ) -> bool:
        base = base_name(t.name)
        if base not in self.tensors or (self.tied_only and not tied):
            return False
        if self.experts is not None and self.experts != n_experts:
            return False
        if (
            (self.min_experts is not None and n_experts < self.min_experts)
            or (self.min_gqa is not None and n_gqa < self.min_gqa)
            or (self.imatrix is not None and self.imatrix != imatrix)
        ):
            return False
        if t.layer is None or self.layers == "all":
            return True
        if isinstance(self.layers, tuple):
            return t.layer in self.layers
        return LAYER_SELECTORS[self.layers](t.layer, n_layers)


@dataclass(frozen=True)
class Preset:
    """A named recipe: default type, rules, fallbacks and the general.file_type it declares."""

    id: str
    name: str
    file_type: gguf.LlamaFileType
    default_type: Q
    description: str
    rules: tuple[Rule, ...] = ()
    fallbacks: Mapping[Q, Q] = field(default_factory=lambda: MappingProxyType({}))
    source: str = ""
    plan: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # a plan's [plan] table

    def tensor_type(
        self,
        t: PlannedTensor,
        *,
        n_layers: int,
        tied: bool,
        n_experts: int = 0,
        n_gqa: int = 1,
        imatrix: bool = False,
        overrides: Sequence[tuple[re.Pattern[str], Q]] = (),
    ) -> Q:
        """The GGML type of one planned tensor under this preset, the user's overrides and whether an
        importance matrix is given."""
        if len(t.shape) < 2 or t.kind in ALWAYS_F32:
            return Q.F32
        chosen = next((q for pattern, q in overrides if pattern.search(t.name)), None)
        if chosen is None:
            chosen = next(
                (r.type for r in self.rules if r.matches(t, n_layers, tied, n_experts, n_gqa=n_gqa, imatrix=imatrix)),
                self.default_type,
            )
        return self._fit(chosen, t.row_len)

    def requires_imatrix(self, name: str, q: Q) -> bool:
        """llama-quant.cpp tensor_requires_imatrix: the very low-bit types, and Q2_K inside a Q2_K_S file."""
        if name in IMATRIX_EXEMPT:
            return False
        return q in NEEDS_IMATRIX or (q == Q.Q2_K and self.file_type == gguf.LlamaFileType.MOSTLY_Q2_K_S)

    def _fit(self, q: Q, row_len: int) -> Q:
        # llama-quant.cpp tensor_type_fallback: a row must hold whole blocks, else a 32-block type, else F16
        if row_len % gguf.GGML_QUANT_SIZES[q][0] == 0:
            return q
        fallback = self.fallbacks.get(q, Q.F16)
        return fallback if row_len % gguf.GGML_QUANT_SIZES[fallback][0] == 0 else Q.F16


def _qtype(value: Any, where: str) -> Q:
    try:
        q = Q[str(value).upper()]
    except KeyError:
        q = None
    if q not in WRITABLE_TYPES:
        raise PresetError(
            f"{where}: unknown or unsupported type {value!r}",
            f"accepted: {', '.join(sorted(x.name for x in WRITABLE_TYPES))}",
        )
    return q


def _layers(value: Any, where: str) -> str | tuple[int, ...]:
    if isinstance(value, str) and value in LAYER_SELECTORS:
        return value
    if isinstance(value, list) and all(isinstance(i, int) and i >= 0 for i in value):
        return tuple(value)
    raise PresetError(
        f"{where}.layers: {value!r} is not a layer selection",
        f"accepted: one of {', '.join(LAYER_SELECTORS)} or a list of layer numbers",
    )


# a plan's [plan] table (quant/plan_file.py writes it; convert records each as quantize.plan.<key>): key -> types
PLAN_FIELDS: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {
        "target": (str,),
        "budget_bytes": (int,),
        "max_bytes_per_token": (int,),
        "objective": (str,),
        "estimated_error": (float,),
        "imatrix": (str,),
        "sensitivity": (str,),
        "types": (list,),
        "sample_rows": (int,),
        "version": (str,),
    }
)


def _plan_table(raw: Any, source: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise PresetError(f"{source}: [plan] must be a table")
    for key, value in raw.items():
        want = PLAN_FIELDS.get(key)
        if want is None:
            raise PresetError(f"{source}: plan.{key} is not a plan field", f"accepted: {', '.join(PLAN_FIELDS)}")
        ok = isinstance(value, want) and not isinstance(value, bool)
        if ok and isinstance(value, int) and value < 0:
            ok = False
        if ok and isinstance(value, list):
            ok = bool(value) and all(isinstance(v, str) for v in value)
        if not ok:
            raise PresetError(f"{source}: plan.{key} = {value!r} is not a {want[0].__name__} of the right kind")
    return MappingProxyType(dict(raw))


RULE_FIELDS = ("tensors", "type", "layers", "tied_only", "experts", "min_experts", "min_gqa", "imatrix")


def _rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict) or not {"tensors", "type"} <= raw.keys():
        raise PresetError(f"{where}: a rule needs 'tensors' (list of names) and 'type'")
    unknown = set(raw) - set(RULE_FIELDS)
    if unknown:
        raise PresetError(f"{where}: unknown field(s) {sorted(unknown)}", f"accepted: {', '.join(RULE_FIELDS)}")
    for key in ("experts", "min_experts", "min_gqa"):
        if key in raw and (not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 1):
            raise PresetError(f"{where}.{key}: {raw[key]!r} is not a positive whole number")
    if "imatrix" in raw and not isinstance(raw["imatrix"], bool):
        raise PresetError(f"{where}.imatrix: {raw['imatrix']!r} is not true or false")
    names = tuple(gguf.TENSOR_NAMES[k].split(".")[-1] for k in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.QWEN3MOE])
    tensors = raw["tensors"]
    if not isinstance(tensors, list) or not tensors or any(n not in names for n in tensors):
        raise PresetError(
            f"{where}.tensors: {tensors!r} must list qwen3moe tensor names", f"accepted: {', '.join(names)}"
        )
    return Rule(
        tuple(tensors),
        _qtype(raw["type"], f"{where}.type"),
        _layers(raw.get("layers", "all"), where),
        bool(raw.get("tied_only", False)),
        raw.get("experts"),
        raw.get("min_experts"),
        raw.get("min_gqa"),
        raw.get("imatrix"),
    )


def parse_preset(data: Mapping[str, Any], preset_id: str, source: str) -> Preset:
    """Validate a preset's TOML table; errors name the file and the field."""
    known = {"name", "file_type", "default_type", "description", "rules", "fallbacks", "plan"}
    if unknown := set(data) - known:
        raise PresetError(f"{source}: unknown field(s) {sorted(unknown)}", f"accepted: {', '.join(sorted(known))}")
    for required in ("name", "file_type", "default_type"):
        if required not in data:
            raise PresetError(f"{source}: missing field {required!r}")
    try:
        file_type = gguf.LlamaFileType[str(data["file_type"]).upper()]
    except KeyError:
        raise PresetError(
            f"{source}: file_type {data['file_type']!r} is not a llama.cpp file type",
            "accepted: names of gguf.LlamaFileType such as MOSTLY_Q8_0",
        ) from None
    rules = tuple(_rule(r, f"{source}: rules[{i}]") for i, r in enumerate(data.get("rules", [])))
    fallbacks = {
        _qtype(k, f"{source}: fallbacks"): _qtype(v, f"{source}: fallbacks.{k}")
        for k, v in data.get("fallbacks", {}).items()
    }
    return Preset(
        preset_id,
        str(data["name"]),
        file_type,
        _qtype(data["default_type"], f"{source}: default_type"),
        str(data.get("description", "")),
        rules,
        MappingProxyType(fallbacks),
        source,
        _plan_table(data.get("plan", {}), source),
    )


def _builtin_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    dirs = [Path(str(resources.files("marco_gguf") / d)) for d in PRESET_DIRS]
    return [d for d in dirs + [here.parents[1] / d for d in PRESET_DIRS] if d.is_dir()]  # the checkout


def builtin_presets() -> dict[str, Path]:
    """Preset id (file stem) -> file, for the presets shipped with marco-gguf."""
    found: dict[str, Path] = {}
    for folder in _builtin_dirs():
        for f in sorted(folder.glob("*.toml")):
            found.setdefault(f.stem, f)
    return found


def load_preset(name_or_path: str | Path) -> Preset:
    """Load a shipped preset by id (`q8_0`) or a user's preset file (`my.toml`)."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        shipped = builtin_presets()
        key = str(name_or_path).lower()
        if key not in shipped:
            raise PresetError(
                f"unknown preset {str(name_or_path)!r}", f"accepted: {', '.join(shipped)} or a .toml file"
            )
        path = shipped[key]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PresetError(f"{path}: preset file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{path}: invalid TOML: {e}") from None
    return parse_preset(data, path.stem, str(path))


def check_overrides(overrides: Sequence[tuple[re.Pattern[str], Q]], names: Sequence[str]) -> None:
    """Refuse an override whose pattern matches none of the model's tensors: a typo would otherwise be ignored
    without a word and the file made with types the user did not ask for."""
    for pattern, q in overrides:
        if not any(pattern.search(n) for n in names):
            raise PresetError(
                f"--tensor-type {pattern.pattern}={q.name}: the pattern {pattern.pattern!r} matches no tensor "
                f"of this model",
                "tensors are named like blk.0.ffn_down_exps.weight or token_embd.weight "
                "(marco-gguf inspect FILE lists them)",
            )


def parse_overrides(specs: Sequence[str]) -> list[tuple[re.Pattern[str], Q]]:
    """`PATTERN=TYPE` strings (llama-quantize's --tensor-type) -> compiled (regex, type) pairs."""
    out = []
    for spec in specs:
        pattern, sep, qname = spec.rpartition("=")
        if not sep or not pattern:
            raise PresetError(f"--tensor-type {spec!r}: expected PATTERN=TYPE", "e.g. --tensor-type ffn_down_exps=q6_k")
        try:
            out.append((re.compile(pattern), _qtype(qname, f"--tensor-type {spec!r}")))
        except re.error as e:
            raise PresetError(f"--tensor-type {spec!r}: invalid pattern ({e})") from None
    return out
