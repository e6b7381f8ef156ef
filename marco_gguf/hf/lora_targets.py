"""Do an adapter's `target_modules` and `target_parameters` name things a Marco base has?

PEFT matches a list entry against the end of a module's name at a dot boundary, a string as a regular
expression over the whole name (tuners_utils.check_target_module_exists); "all-linear" means every linear
layer. An entry that matches nothing in the base means the adapter was made for another model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from marco_gguf.arch.config import MarcoConfig
from marco_gguf.arch.qwen3moe import BLOCK, EXPERT_KINDS, HEAD, TAIL
from marco_gguf.base.errors import AdapterError
from marco_gguf.hf.lora_config import LoraSettings

ALL_LINEAR = "all-linear"  # PEFT's INCLUDE_LINEAR_LAYERS_SHORTHAND


def module_names(c: MarcoConfig) -> Iterator[str]:
    """Every module name of the base, in transformers 4.x's per-expert spelling and 5.x's fused one."""
    yield from ("model", "model.layers", "lm_head", *(k.hf.removesuffix(".weight") for k in HEAD + TAIL))
    for layer in range(c.n_layers):
        prefix = f"model.layers.{layer}"
        yield from (prefix, f"{prefix}.self_attn", f"{prefix}.mlp", f"{prefix}.mlp.experts")
        yield from (f"{prefix}.{k.hf.removesuffix('.weight')}" for k in BLOCK if k.scope == "layer")
        for e in range(c.n_experts):
            yield from (f"{prefix}.mlp.experts.{e}.{k.hf}" for k in EXPERT_KINDS)


def parameter_names(c: MarcoConfig) -> Iterator[str]:
    """Every parameter name of the base as transformers 5.x holds it in memory (fused experts)."""
    yield from (k.hf for k in HEAD + TAIL)
    for layer in range(c.n_layers):
        prefix = f"model.layers.{layer}"
        yield from (f"{prefix}.{k.hf}" for k in BLOCK if k.scope == "layer")
        yield from (f"{prefix}.mlp.experts.gate_up_proj", f"{prefix}.mlp.experts.down_proj")


def _matches(entry: str, names: Iterable[str]) -> bool:
    return any(n == entry or n.endswith(f".{entry}") for n in names)


def check_targets(settings: LoraSettings, c: MarcoConfig, keys: set[str]) -> None:
    """Refuse targets the base lacks; `keys` are the module/parameter names the adapter's tensors change."""
    modules = list(module_names(c))
    targets = settings.target_modules
    if isinstance(targets, str):
        if targets.lower() != ALL_LINEAR and not any(re.fullmatch(targets, n) for n in modules):
            raise AdapterError(
                f"{settings.path}: target_modules {targets!r} matches no module of the base (e.g. {modules[-1]})",
                "the adapter was made for another model",
            )
    else:
        for entry in targets:
            if not _matches(entry, modules):
                raise AdapterError(
                    f"{settings.path}: target_modules names {entry!r}, which the base (qwen3_moe) does not have",
                    "the adapter was made for another model",
                )
    params = list(parameter_names(c))
    for entry in settings.target_parameters:
        if not _matches(entry, params):
            raise AdapterError(
                f"{settings.path}: target_parameters names {entry!r}, which the base (qwen3_moe) does not have "
                "(its fused experts are mlp.experts.gate_up_proj and mlp.experts.down_proj)",
                "the adapter was made for another model",
            )
    if not keys and not settings.modules_to_save:
        raise AdapterError(f"{settings.path}: the adapter changes nothing (no LoRA factors, no modules_to_save)")
