"""GET /props and GET /slots in llama-server's shapes (tools/server/server-context.cpp get_res_props,
server_slot::to_json), plus the model's facts under `model` (what `inspect` reports), which the chat page
shows and fills its controls from.

`default_generation_settings.params` are the sampling values a request that sets nothing gets: the
server's resolved `Sampling` (Marco's defaults, overlaid by the GGUF's general.sampling.*, then by serve's
options) and its default max_tokens (-1: to the end of the context, as llama-server writes "no limit").
"""

from __future__ import annotations

from typing import Any

import gguf

from marco_gguf.arch.qwen3moe import GROUPS
from marco_gguf.arch.sampling import Sampling
from marco_gguf.gguf_io.info import GGUFInfo
from marco_gguf.llama.engine import Engine
from marco_gguf.server.lora_api import adapter_list
from marco_gguf.version import __version__

SAMPLING_FIELDS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
)


def generation_params(defaults: Sampling, max_tokens: int | None) -> dict[str, Any]:
    """llama-server's `params` object, for the fields this server has (seed null: a random seed per request)."""
    n_predict = -1 if max_tokens is None else max_tokens
    return {
        **{k: getattr(defaults, k) for k in SAMPLING_FIELDS},
        "max_tokens": n_predict,
        "n_predict": n_predict,
        "stream": False,
    }


def file_type_name(file_type: int | None) -> str | None:
    """ "Q4_K_M" for general.file_type 15 (gguf-py's LlamaFileType names, without MOSTLY_ / ALL_)."""
    if file_type is None:
        return None
    try:
        return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return None


def model_facts(info: GGUFInfo, model_id: str) -> dict[str, Any]:
    """Name, file, size, quantization per group, experts, active parameters, bytes per token."""
    totals = info.group_totals()
    groups = {
        g: {
            **totals[g],
            "types": sorted({t.type for t in info.tensors if t.group == g}),
        }
        for g in GROUPS
    }
    h = info.hparams
    return {
        "id": model_id,
        "name": info.name,
        "file": info.path.name,
        "size": info.file_size,
        "architecture": info.architecture,
        "file_type": file_type_name(info.file_type),
        "parameters": info.n_parameters,
        "active_parameters": info.active_parameters,
        "bits_per_weight": info.bits_per_weight,
        "bytes_per_token": info.bytes_per_token,
        "experts": {"count": h.get("expert_count"), "used": h.get("expert_used_count")},
        "layers": h.get("block_count"),
        "context_length": h.get("context_length"),
        "vocab_size": info.tokenizer.get("tokens"),
        "groups": groups,
        "sampling_in_file": info.sampling,
    }


def props(engine: Engine, model_id: str, defaults: Sampling, max_tokens: int | None) -> dict[str, Any]:
    template = engine.template
    return {
        "default_generation_settings": {"n_ctx": engine.ctx, "params": generation_params(defaults, max_tokens)},
        "total_slots": engine.parallel,
        "model_alias": model_id,
        "model_path": str(engine.info.path),
        "model_ftype": file_type_name(engine.info.file_type),
        "modalities": {"vision": False, "audio": False, "video": False},
        "chat_template": template.source,
        "chat_template_from_gguf": template.from_gguf,
        "bos_token": template.special_tokens["bos_token"],
        "eos_token": template.special_tokens["eos_token"],
        "build_info": f"marco-gguf {__version__}",
        "endpoint_slots": True,
        "endpoint_props": False,
        "endpoint_metrics": True,
        "is_sleeping": False,
        "model": model_facts(engine.info, model_id),
        "lora_adapters": adapter_list(engine),
    }


def slots(engine: Engine) -> list[dict[str, Any]]:
    out = []
    for s in engine.slots():
        slot: dict[str, Any] = {
            "id": s.id,
            "n_ctx": engine.ctx,
            "speculative": False,
            "is_processing": s.job is not None,
            "n_cache_tokens": s.cache_tokens,
        }
        if s.job is not None:
            slot |= {
                "id_task": s.job,
                "n_prompt_tokens": s.prompt_tokens,
                "n_prompt_tokens_cache": s.cached_tokens,
                "next_token": [
                    {"has_next_token": True, "n_remain": s.max_tokens - s.generated, "n_decoded": s.generated}
                ],
            }
        out.append(slot)
    return out
