"""Reading a GGUF back: hyperparameters, tokenizer, tensor groups, active bytes per token, RAM estimate.

Shared by `inspect`, `verify`, `chat` (RAM check) and `bench` (roofline). Only the header is
parsed; tensor data is never touched here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from gguf import GGUFValueType as V

from .errors import GGUFFileError
from .gguf_check import check_qwen3moe
from .qwen3moe import ARCH_NAME
from .reader import DAMAGED, read_header

GROUPS = ("embeddings", "attention", "router", "experts", "norms")
# GGUF tensor base name -> group; source: the qwen3moe tensor list in gguf-py constants.py
GROUP_OF: dict[str, str] = {
    "token_embd": "embeddings", "output": "embeddings", "attn_q": "attention", "attn_k": "attention",
    "attn_v": "attention", "attn_output": "attention", "ffn_gate_inp": "router", "ffn_gate_exps": "experts",
    "ffn_up_exps": "experts", "ffn_down_exps": "experts", "attn_norm": "norms", "ffn_norm": "norms",
    "attn_q_norm": "norms", "attn_k_norm": "norms", "output_norm": "norms",
}
KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default F16 KV cache
LOGITS_BATCH = 512        # llama.cpp's default n_batch: its logits/compute buffers scale with it


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first)
    type: str
    n_bytes: int
    group: str

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GGUFInfo:
    """Everything `inspect` reports, as plain data (`as_dict()` for --json)."""

    path: Path
    file_size: int
    architecture: str
    name: str | None
    file_type: int | None
    hparams: dict[str, Any]
    tokenizer: dict[str, Any]
    has_chat_template: bool
    tensors: tuple[TensorInfo, ...] = field(repr=False)

    def group_totals(self) -> dict[str, dict[str, float]]:
        out = {}
        for g in GROUPS:
            ts = [t for t in self.tensors if t.group == g]
            n, b = sum(t.n_elements for t in ts), sum(t.n_bytes for t in ts)
            out[g] = {"tensors": len(ts), "parameters": n, "bytes": b, "bits_per_weight": 8 * b / n if n else 0.0}
        return out

    @property
    def n_parameters(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8 * sum(t.n_bytes for t in self.tensors) / max(1, self.n_parameters)

    @property
    def expert_fraction(self) -> float:
        used, total = self.hparams.get("expert_used_count"), self.hparams.get("expert_count")
        return used / total if used and total else 1.0

    @property
    def active_parameters(self) -> int:
        """Parameters touched per token: everything shared plus the routed share of the experts."""
        f = self.expert_fraction
        return round(sum(t.n_elements * (f if t.group == "experts" else 1) for t in self.tensors))

    @property
    def bytes_per_token(self) -> int:
        return bytes_per_token(self)

    def kv_cache_bytes(self, n_ctx: int) -> int:
        h = self.hparams
        kv_dim = h.get("attention.head_count_kv", 0) * h.get("attention.key_length", 0)
        return 2 * h.get("block_count", 0) * n_ctx * kv_dim * KV_BYTES_PER_ELEMENT

    def ram_needed(self, n_ctx: int) -> dict[str, int]:
        weights = sum(t.n_bytes for t in self.tensors)
        vocab = next((t.shape[0] for t in self.tensors if t.name == "token_embd.weight"), 0)
        compute = LOGITS_BATCH * vocab * 4 * 2  # logits plus llama.cpp's compute buffer of the same order
        kv = self.kv_cache_bytes(n_ctx)
        return {"weights": weights, "kv_cache": kv, "compute": compute, "total": weights + kv + compute}

    def as_dict(self, n_ctx: int = 8192) -> dict[str, Any]:
        return {
            "path": str(self.path), "file_size": self.file_size, "architecture": self.architecture, "name": self.name,
            "file_type": self.file_type, "hparams": self.hparams, "tokenizer": self.tokenizer,
            "has_chat_template": self.has_chat_template, "parameters": self.n_parameters,
            "bits_per_weight": self.bits_per_weight, "groups": self.group_totals(),
            "active_parameters": self.active_parameters, "bytes_per_token": self.bytes_per_token,
            "ctx": n_ctx, "ram_needed": self.ram_needed(n_ctx),
            "tensors": [{"name": t.name, "shape": list(t.shape), "type": t.type, "bytes": t.n_bytes, "group": t.group}
                        for t in self.tensors],
        }


def bytes_per_token(info: GGUFInfo) -> int:
    """Weight bytes one generated token reads (the one formula `inspect` and `bench` report): the routed share
    (expert_used_count / expert_count) of the ffn_*_exps tensors, all of attention, router and norms, the output
    matrix (token_embd when tied), and one row of token_embd for the embedding lookup."""
    share, total = info.expert_fraction, 0.0
    tied = not any(t.name == "output.weight" for t in info.tensors)
    for t in info.tensors:
        if t.group == "experts":
            total += t.n_bytes * share
        elif t.name == "token_embd.weight":
            total += t.n_bytes / t.shape[0] + (t.n_bytes if tied else 0)
        else:
            total += t.n_bytes
    return round(total)


def _tokenizer_summary(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": fields.get("tokenizer.ggml.model"), "pre": fields.get("tokenizer.ggml.pre"),
        "tokens": len(fields.get("tokenizer.ggml.tokens", ())), "merges": len(fields.get("tokenizer.ggml.merges", ())),
        **{k: fields.get(f"tokenizer.ggml.{k}") for k in
           ("bos_token_id", "eos_token_id", "padding_token_id", "add_bos_token", "add_eos_token")},
    }


def read_info(path: str | Path) -> GGUFInfo:
    """Parse a GGUF's header into GGUFInfo, validated (see _read_info); cached while the file is unchanged,
    since check_model and load_model both read it before a load."""
    path = Path(path)
    if not path.is_file():
        raise GGUFFileError(f"{path}: no such file")
    st = path.stat()
    return _cached_info(path.resolve(), st.st_size, st.st_mtime_ns, path)


@lru_cache(maxsize=8)
def _cached_info(resolved: Path, size: int, mtime_ns: int, path: Path) -> GGUFInfo:
    return _read_info(path)


def _read_info(path: Path) -> GGUFInfo:
    """Parse a GGUF's header into GGUFInfo (no tensor data is read); a qwen3moe file is also checked for
    everything llama.cpp would abort or fail on while loading it (gguf_check.py)."""
    header = read_header(path)
    fields = header.fields
    arch = fields.get("general.architecture") or "?"
    if header.types.get("general.architecture", V.STRING) != V.STRING:
        raise GGUFFileError(f"{path}: key general.architecture is {header.types['general.architecture'].name}, "
                            "expected STRING", DAMAGED)
    if arch == ARCH_NAME:
        check_qwen3moe(path, header, arch)
    prefix = f"{arch}."
    hparams = {k[len(prefix):]: v for k, v in fields.items() if k.startswith(prefix)}
    tensors = tuple(TensorInfo(t.name, t.shape, t.type.name, t.n_bytes,
                               GROUP_OF.get(t.name.removesuffix(".weight").split(".")[-1], "other"))
                    for t in header.tensors)
    return GGUFInfo(Path(path), Path(path).stat().st_size, arch, fields.get("general.name"),
                    fields.get("general.file_type"), hparams, _tokenizer_summary(fields),
                    "tokenizer.chat_template" in fields, tensors)


def require_qwen3moe(info: GGUFInfo) -> None:
    if info.architecture != ARCH_NAME:
        raise GGUFFileError(f"{info.path}: architecture {info.architecture!r} is not {ARCH_NAME}",
                            "marco-gguf runs Marco (qwen3moe) GGUFs only")

