"""All GGUF metadata for a conversion, collected in gguf-py's typed GGUFWriter.

The GGUFWriter is used only as an ordered, typed key/value builder (its `add_*` setters and
`kv_data`), so names and value types are exactly gguf-py's; our streaming writer serialises it.
Key order follows llama.cpp's converter: general.*, qwen3moe.*, file type, tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import gguf

from .checkpoint import MarcoConfig
from .qwen3moe import ARCH_NAME, PlannedTensor, add_hparams
from .tokenizer import add_tokenizer


@dataclass(frozen=True)
class ParameterCount:
    """gguf-py's get_total_parameter_count, computed from the plan instead of loaded tensors."""

    total: int
    shared: int
    expert: int  # parameters of one expert across all stacked tensors
    expert_count: int

    @property
    def size_label(self) -> str:
        return gguf.size_label(self.total, self.shared, self.expert, self.expert_count)


def count_parameters(planned: list[PlannedTensor]) -> ParameterCount:
    total = shared = expert = expert_sum = n_expert_tensors = 0
    for t in planned:
        total += t.n_elements
        if "_exps." in t.name:
            expert += t.n_elements // t.shape[0]
            expert_sum += t.shape[0]
            n_expert_tensors += 1
        else:
            shared += t.n_elements
    return ParameterCount(total, shared, expert, expert_sum // n_expert_tensors if n_expert_tensors else 0)


def general_metadata(folder: Path, name: str | None, params: ParameterCount) -> gguf.Metadata:
    """general.* as llama.cpp's converter derives it: model card, config, folder-name heuristics."""
    meta = gguf.Metadata.load(None, folder, name, params.total)
    if meta.name is None:
        meta.name = folder.name
    if meta.size_label is None and params.total > 0:
        meta.size_label = params.size_label
    return meta


def build_metadata(folder: Path, config: MarcoConfig, planned: list[PlannedTensor], *,
                   file_type: gguf.LlamaFileType, name: str | None) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """Ordered key -> GGUFValue mapping for the whole file, plus a tokenizer summary."""
    kv = gguf.GGUFWriter(path=None, arch=ARCH_NAME)
    kv.add_type(gguf.GGUFType.MODEL)
    general_metadata(folder, name, count_parameters(planned)).set_gguf_meta_model(kv)
    add_hparams(kv, config)
    kv.add_file_type(file_type)
    kv.add_quantization_version(gguf.GGML_QUANT_VERSION)
    summary = add_tokenizer(kv, folder, config.vocab_size)
    return kv.kv_data[0], summary
