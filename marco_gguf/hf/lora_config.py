"""A PEFT LoRA adapter's adapter_config.json, read with typed checks: the settings a merge or a GGUF adapter
needs (rank, alpha, rsLoRA, per-module rank/alpha patterns, targets, modules_to_save) and a clear refusal of
the PEFT variants whose result is not `W + scale * B @ A` (DoRA, aLoRA, QALoRA, ...).

The field names and their meaning are PEFT's (peft/tuners/lora/config.py, LoraConfig; the scale
`lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`, is LoraLayer.update_layer's).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marco_gguf.base.errors import AdapterError
from marco_gguf.base.jsonfields import Fields, is_int, load_json_object

CONFIG_NAME = "adapter_config.json"
HINT = "a PEFT LoRA adapter folder holds adapter_config.json and adapter_model.safetensors"
BASE_CLASS = "Qwen3MoeForCausalLM"

# config key -> the PEFT variant it turns on; each changes the forward pass beyond W + scale * B @ A
VARIANTS: Mapping[str, str] = {
    "use_dora": "DoRA (weight-decomposed LoRA: a magnitude vector rescales every column)",
    "use_qalora": "QALoRA (quantization-aware LoRA, pooled inputs)",
    "use_bdlora": "BD-LoRA (block-diagonal LoRA)",
    "alora_invocation_tokens": "aLoRA (activated LoRA: applies only after its invocation tokens)",
    "velora_config": "VeLoRA",
    "kasa_config": "KaSA",
    "arrow_config": "Arrow (routing among several LoRA experts)",
    "monteclora_config": "MonteCLoRA",
    "trainable_token_indices": "trainable tokens (new or retrained token embeddings)",
    "layer_replication": "layer replication (a deeper model than the base)",
    "lora_bias": "LoRA with a bias on lora_B",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D-style transposed weights, which Marco does not have)",
}


@dataclass(frozen=True)
class LoraSettings:
    """What adapter_config.json says about how its factors combine with the base weights."""

    path: Path
    r: int
    alpha: float
    use_rslora: bool
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    target_modules: tuple[str, ...] | str = ()  # a list of names, or one regular expression (PEFT's two forms)
    target_parameters: tuple[str, ...] = ()
    modules_to_save: tuple[str, ...] = ()
    base_model: str | None = None  # base_model_name_or_path, as recorded by PEFT (informational)

    def rank_alpha(self, key: str) -> tuple[int, float]:
        """The rank and alpha PEFT gives the module or parameter `key` (LoraModel._create_and_replace)."""
        r = self.rank_pattern.get(pattern_key(self.rank_pattern, key), self.r)
        alpha = self.alpha_pattern.get(pattern_key(self.alpha_pattern, key), self.alpha)
        return r, alpha

    def scale(self, r: int, alpha: float) -> float:
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def pattern_key(patterns: Mapping[str, Any], key: str) -> str:
    """PEFT's get_pattern_key: the first pattern that matches the end of `key` at a dot boundary."""
    return next((p for p in patterns if re.match(rf"(.*\.)?({p})$", key)), key)


def _refuse_variants(f: Fields) -> None:
    peft_type = f.str("peft_type", default="LORA")
    if peft_type != "LORA":
        raise AdapterError(
            f"{f.path}: peft_type is {peft_type!r}; only LoRA adapters can be merged or converted",
            "merge the adapter with PEFT's merge_and_unload() and convert the merged checkpoint instead",
        )
    for key, what in VARIANTS.items():
        value = f.data.get(key)
        if value not in (None, False, [], {}, 0):
            raise AdapterError(
                f"{f.path}: {key} is set: {what} is not plain LoRA, so W + scale * B @ A would not be the model "
                "PEFT runs",
                "merge it with PEFT's merge_and_unload() where that is supported, then convert the merged checkpoint",
            )


def _patterns(f: Fields, key: str, integer: bool) -> dict[str, Any]:
    raw = f.obj(key, default={})
    for k, v in raw.items():
        ok = is_int(v) and v >= 1 if integer else (is_int(v) or isinstance(v, float)) and math.isfinite(v)
        if not ok:
            raise f.sub(key).fail(k, v, "a positive integer rank" if integer else "a finite number")
        try:
            re.compile(k)
        except re.error as e:
            raise AdapterError(f"{f.path}: {key} pattern {k!r} is not a regular expression ({e})", HINT) from None
    return {k: (v if integer else float(v)) for k, v in raw.items()}


def _names(f: Fields, key: str) -> tuple[str, ...]:
    return tuple(f.list(key, str, default=None) or ())


def _targets(f: Fields) -> tuple[str, ...] | str:
    value = f.data.get("target_modules")
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as e:
            raise AdapterError(f"{f.path}: target_modules {value!r} is not a regular expression ({e})", HINT) from None
        return value
    return _names(f, "target_modules")


def load_settings(folder: Path) -> LoraSettings:
    """Read and check `folder/adapter_config.json`."""
    path = folder / CONFIG_NAME
    f = Fields(load_json_object(path, AdapterError, HINT), path, AdapterError, "save the adapter again with PEFT")
    _refuse_variants(f)
    auto = f.obj("auto_mapping", default={})
    base_class = auto.get("base_model_class")
    if base_class is not None and base_class != BASE_CLASS:
        raise AdapterError(
            f"{path}: auto_mapping.base_model_class is {base_class!r}: the adapter was made for another model "
            f"than {BASE_CLASS}",
            "use an adapter trained on a Marco (qwen3_moe) base",
        )
    rank_pattern, alpha_pattern = _patterns(f, "rank_pattern", True), _patterns(f, "alpha_pattern", False)
    use_rslora = f.bool("use_rslora", default=False)
    if use_rslora and (rank_pattern or alpha_pattern):  # PEFT refuses this combination too (LoraModel)
        raise AdapterError(f"{path}: use_rslora with rank_pattern or alpha_pattern is not defined by PEFT", HINT)
    return LoraSettings(
        path=path,
        r=f.int("r", lo=1),
        alpha=f.number("lora_alpha", lo=0.0, exclusive_lo=False),
        use_rslora=use_rslora,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        target_modules=_targets(f),
        target_parameters=_names(f, "target_parameters"),
        modules_to_save=_names(f, "modules_to_save"),
        base_model=f.str("base_model_name_or_path", default=None),
    )
