"""All GGUF metadata for a conversion, collected through gguf-py's typed GGUFWriter setters.

`KVCollector` is a GGUFWriter that never writes: every typed `add_*` setter ends in the public
`add_key_value`, which it overrides to record the key, value and type, so names and value types are
exactly gguf-py's while our streaming writer (writer.py) serialises them. Key order follows llama.cpp's
converter: general.*, qwen3moe.*, file type, tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from marco_gguf.arch.config import MarcoConfig
from marco_gguf.arch.qwen3moe import ARCH_NAME, PlannedTensor, add_hparams, group_of
from marco_gguf.hf.tokenizer import add_tokenizer
from marco_gguf.version import __version__


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
        if group_of(t.name) == "experts":
            expert += t.n_elements // t.shape[0]
            expert_sum += t.shape[0]
            n_expert_tensors += 1
        else:
            shared += t.n_elements
    return ParameterCount(total, shared, expert, expert_sum // n_expert_tensors if n_expert_tensors else 0)


def general_metadata(
    folder: Path, name: str | None, params: ParameterCount, *, repo_id: str | None = None
) -> gguf.Metadata:
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
    meta.quantized_by = f"marco-gguf {__version__}"
    if repo_id is not None:
        meta.repo_url = f"https://huggingface.co/{repo_id}"
        meta.base_models = gguf.Metadata.apply_metadata_heuristic(
            gguf.Metadata(), model_card={"base_model": repo_id}, total_params=params.total
        ).base_models
    return meta


# the general.* fields gguf-py also derives from a folder's name (Metadata.apply_metadata_heuristic)
FOLDER_NAME_FIELDS = ("name", "organization", "basename", "finetune", "version", "size_label")


def _names_from_repo(meta: gguf.Metadata, folder: Path, repo_name: str, name: str | None, total_params: int) -> None:
    """A hub snapshot folder is named by its commit hash: derive from the repo's name instead what gguf-py
    derives from a folder's name, so the file is named as if converted from a local clone."""
    card_and_config = gguf.Metadata.apply_metadata_heuristic(
        gguf.Metadata(),
        gguf.Metadata.load_model_card(folder),
        gguf.Metadata.load_hf_parameters(folder),
        None,
        total_params,
    )
    for f in FOLDER_NAME_FIELDS:
        setattr(meta, f, getattr(card_and_config, f))
    gguf.Metadata.apply_metadata_heuristic(meta, model_path=Path(repo_name), total_params=total_params)
    if name is not None:
        meta.name = name


class KVCollector(gguf.GGUFWriter):
    """Records what gguf-py's setters would write, in order (a later value for a key replaces the earlier one)."""

    def __init__(self, arch: str) -> None:
        self.collected: dict[str, gguf.GGUFValue] = {}
        super().__init__(path=None, arch=arch)

    def add_key_value(
        self, key: str, val: Any, vtype: gguf.GGUFValueType, sub_type: gguf.GGUFValueType | None = None
    ) -> None:
        self.collected[key] = gguf.GGUFValue(value=val, type=vtype, sub_type=sub_type)


def build_metadata(
    folder: Path,
    config: MarcoConfig,
    planned: list[PlannedTensor],
    *,
    file_type: gguf.LlamaFileType,
    name: str | None,
    repo_id: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ordered key -> GGUFValue mapping for the whole file, plus a tokenizer summary."""
    kv = KVCollector(ARCH_NAME)
    kv.add_type(gguf.GGUFType.MODEL)
    general_metadata(folder, name, count_parameters(planned), repo_id=repo_id).set_gguf_meta_model(kv)
    add_hparams(kv, config)
    kv.add_file_type(file_type)
    kv.add_quantization_version(gguf.GGML_QUANT_VERSION)
    summary = add_tokenizer(kv, folder, config.vocab_size)
    return kv.collected, summary
