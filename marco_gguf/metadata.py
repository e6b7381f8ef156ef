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


def general_metadata(folder: Path, name: str | None, params: ParameterCount, *,
                     repo_id: str | None = None) -> gguf.Metadata:
    """general.* as llama.cpp's converter derives it: model card, config, folder-name heuristics.

    marco-gguf adds `quantized_by`, and for a hub download (`repo_id`, owner/name) the source repo as
    `repo_url` and as the one base model, in gguf-py's own form for a card's `base_model: owner/name`.
    """
    meta = gguf.Metadata.load(None, folder, name, params.total)
    if repo_id is not None:
        _names_from_repo(meta, folder, repo_id.split("/")[1], name, params.total)
    if meta.name is None:
        meta.name = folder.name
    if meta.size_label is None and params.total > 0:
        meta.size_label = params.size_label
    from . import __version__
    meta.quantized_by = f"marco-gguf {__version__}"
    if repo_id is not None:
        meta.repo_url = f"https://huggingface.co/{repo_id}"
        meta.base_models = gguf.Metadata.apply_metadata_heuristic(
            gguf.Metadata(), model_card={"base_model": repo_id}, total_params=params.total).base_models
    return meta


# the general.* fields gguf-py also derives from a folder's name (Metadata.apply_metadata_heuristic)
FOLDER_NAME_FIELDS = ("name", "organization", "basename", "finetune", "version", "size_label")


def _names_from_repo(meta: gguf.Metadata, folder: Path, repo_name: str, name: str | None, total_params: int) -> None:
    """A hub snapshot folder is named by its commit hash: derive from the repo's name instead what gguf-py
    derives from a folder's name, so the file is named as if converted from a local clone."""
    card_and_config = gguf.Metadata.apply_metadata_heuristic(
        gguf.Metadata(), gguf.Metadata.load_model_card(folder), gguf.Metadata.load_hf_parameters(folder), None,
        total_params)
    for f in FOLDER_NAME_FIELDS:
        setattr(meta, f, getattr(card_and_config, f))
    gguf.Metadata.apply_metadata_heuristic(meta, model_path=Path(repo_name), total_params=total_params)
    if name is not None:
        meta.name = name


def build_metadata(folder: Path, config: MarcoConfig, planned: list[PlannedTensor], *,
                   file_type: gguf.LlamaFileType, name: str | None,
                   repo_id: str | None = None) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """Ordered key -> GGUFValue mapping for the whole file, plus a tokenizer summary."""
    kv = gguf.GGUFWriter(path=None, arch=ARCH_NAME)
    kv.add_type(gguf.GGUFType.MODEL)
    general_metadata(folder, name, count_parameters(planned), repo_id=repo_id).set_gguf_meta_model(kv)
    add_hparams(kv, config)
    kv.add_file_type(file_type)
    kv.add_quantization_version(gguf.GGML_QUANT_VERSION)
    summary = add_tokenizer(kv, folder, config.vocab_size)
    return kv.kv_data[0], summary
