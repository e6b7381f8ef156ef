"""Hugging Face checkpoint reading: config normalisation and lazy, bounded-memory safetensors access.

Tensors are read row-block by row-block with `os.preadv` into fresh buffers (not mmap), so the
resident set stays at the size of one block whatever the model size.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import CheckpointError, TensorError, UnsupportedModelError

SUPPORTED_ARCHITECTURE = "Qwen3MoeForCausalLM"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors spec's own limit

# safetensors dtype -> (numpy storage dtype, bytes per element); only float weights are meaningful here
SAFETENSORS_DTYPES: Mapping[str, tuple[str, int]] = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2)}


@dataclass(frozen=True)
class MarcoConfig:
    """The hyperparameters llama.cpp's qwen3moe needs, normalised over transformers 4.x/5.x spellings."""

    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_experts: int
    n_experts_used: int
    expert_ff: int
    ff: int | None  # dense intermediate_size: unused by Marco, but llama.cpp's converter records it
    vocab_size: int
    max_positions: int
    rope_theta: float
    rms_eps: float
    tie_embeddings: bool
    bos_token_id: int | None
    eos_token_id: int | list[int] | None
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class TensorRef:
    """Where one safetensors tensor lives: file, dtype, shape and absolute byte offset."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def row_len(self) -> int:
        return self.shape[-1] if self.shape else 1

    @property
    def n_rows(self) -> int:
        return math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1


def _find(raw: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    return next((raw[k] for k in keys if k in raw and raw[k] is not None), default)


def _rope(raw: Mapping[str, Any], path: Path) -> float:
    # transformers 5.x nests rope settings in rope_parameters; 4.x uses rope_theta + rope_scaling
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", None):
        raise UnsupportedModelError(
            f"{path}: rope type {rope_type!r} is not supported; Marco models use plain RoPE ('default')",
            "convert an unmodified Marco checkpoint",
        )
    theta = _find(params, "rope_theta") or _find(raw, "rope_theta")
    if theta is None:
        raise UnsupportedModelError(f"{path}: no rope_theta in config", "add rope_theta (Marco: 1000000.0)")
    return float(theta)


def _refuse_unrepresentable(raw: Mapping[str, Any], path: Path) -> None:
    archs = raw.get("architectures") or []
    if archs != [SUPPORTED_ARCHITECTURE]:
        raise UnsupportedModelError(
            f"{path}: architecture {archs or raw.get('model_type')!r} is not {SUPPORTED_ARCHITECTURE}",
            "marco-gguf converts Marco-MoE (qwen3_moe) checkpoints only; use llama.cpp's convert_hf_to_gguf.py for others",
        )
    if raw.get("norm_topk_prob") is False:
        raise UnsupportedModelError(
            f"{path}: norm_topk_prob is false, but llama.cpp's qwen3moe always renormalises the top-k weights",
            "this checkpoint cannot be represented exactly in GGUF",
        )
    if raw.get("mlp_only_layers") or raw.get("decoder_sparse_step", 1) != 1:
        raise UnsupportedModelError(
            f"{path}: dense layers (mlp_only_layers={raw.get('mlp_only_layers')}, "
            f"decoder_sparse_step={raw.get('decoder_sparse_step', 1)}) are not supported; every layer must be MoE",
            "llama.cpp's qwen3moe expects experts in every layer",
        )
    for key in ("attention_bias", "qkv_bias"):
        if raw.get(key):
            raise UnsupportedModelError(f"{path}: {key} is true; qwen3moe has no attention biases")
    if raw.get("use_qk_norm") is False:
        raise UnsupportedModelError(f"{path}: use_qk_norm is false; qwen3moe always applies q/k norms")
    if raw.get("shared_expert_intermediate_size"):
        raise UnsupportedModelError(f"{path}: shared experts are not part of qwen3moe")


def load_config(folder: Path) -> MarcoConfig:
    """Read and validate `config.json`, accepting both transformers 4.x and 5.x spellings."""
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found", "SOURCE must be a Hugging Face checkpoint folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})", "download config.json again") from None
    raw = {**raw, **raw.get("text_config", {})}
    _refuse_unrepresentable(raw, path)
    try:
        n_heads = int(raw["num_attention_heads"])
        hidden = int(raw["hidden_size"])
        return MarcoConfig(
            n_layers=int(raw["num_hidden_layers"]),
            hidden=hidden,
            n_heads=n_heads,
            n_kv_heads=int(raw.get("num_key_value_heads", n_heads)),
            head_dim=int(raw.get("head_dim") or hidden // n_heads),
            n_experts=int(_find(raw, "num_local_experts", "num_experts")),
            n_experts_used=int(raw["num_experts_per_tok"]),
            expert_ff=int(raw["moe_intermediate_size"]),
            ff=raw.get("intermediate_size"),
            vocab_size=int(raw["vocab_size"]),
            max_positions=int(raw.get("max_position_embeddings", 32768)),
            rope_theta=_rope(raw, path),
            rms_eps=float(raw.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=raw.get("eos_token_id"),
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: missing or invalid hyperparameter {e}", "compare with Marco's published config.json") from None


def _parse_header(file: Path) -> dict[str, TensorRef]:
    """Parse one safetensors header and check every tensor's bytes lie inside the file."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n <= 1 or n > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"{file}: corrupt safetensors header (header length {n}, file size {size})",
                                  "the file is damaged or truncated: download it again")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{file}: corrupt safetensors header ({e})", "download the file again") from None
    base, refs = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        refs[name] = _tensor_ref(file, name, info, base, size)
    return refs


def _tensor_ref(file: Path, name: str, info: Any, base: int, size: int) -> TensorRef:
    try:
        dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{file}: corrupt safetensors header entry for {name}", "download the file again") from None
    if dtype not in SAFETENSORS_DTYPES:
        raise TensorError(f"{file}: tensor {name} has dtype {dtype}; expected one of F32, BF16, F16",
                          "quantized or integer checkpoints are not supported: use the original BF16 release")
    if end - begin != math.prod(shape) * SAFETENSORS_DTYPES[dtype][1]:
        raise CheckpointError(f"{file}: tensor {name} spans {end - begin} bytes but shape {list(shape)} "
                              f"in {dtype} needs {math.prod(shape) * SAFETENSORS_DTYPES[dtype][1]}", "download the file again")
    if base + end > size:
        raise CheckpointError(f"{file}: truncated: tensor {name} ends at byte {base + end} but the file has {size} bytes",
                              "the download was interrupted: download this shard again")
    return TensorRef(name, file, dtype, shape, base + begin, end - begin)


def _shard_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{index}: unreadable weight_map ({e})", "download the index again") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            count = sum(1 for v in weight_map.values() if v == missing[0])
            raise CheckpointError(f"{folder / missing[0]}: missing shard ({count} tensors listed in {INDEX_NAME})"
                                  + (f"; also missing: {', '.join(missing[1:])}" if missing[1:] else ""),
                                  "download the missing shard(s) into the checkpoint folder")
        return [folder / f for f in files], weight_map
    if (folder / SINGLE_NAME).is_file():
        return [folder / SINGLE_NAME], None
    raise CheckpointError(f"{folder}: no {SINGLE_NAME} or {INDEX_NAME}",
                          "SOURCE must hold safetensors weights (pytorch_model.bin is not supported)")


def index_tensors(folder: Path) -> dict[str, TensorRef]:
    """Map every tensor name to its location, checking the shard index against the shards' own headers."""
    files, weight_map = _shard_files(folder)
    refs: dict[str, TensorRef] = {}
    for file in files:
        for name, ref in _parse_header(file).items():
            if weight_map is not None and weight_map.get(name) != file.name:
                raise CheckpointError(f"{file}: holds tensor {name}, which {INDEX_NAME} places in {weight_map.get(name)}",
                                      "the index and shards are from different downloads: download them again")
            refs[name] = ref
    if weight_map is not None and (absent := sorted(set(weight_map) - set(refs))):
        raise CheckpointError(f"{folder / weight_map[absent[0]]}: lacks {len(absent)} tensor(s) its index lists, "
                              f"e.g. {absent[0]}", "download this shard again")
    return refs


class Checkpoint:
    """An open checkpoint: validated config, tensor index and row-block reads as float32."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CheckpointError(f"{self.folder}: not a folder", "SOURCE must be a Hugging Face checkpoint folder")
        self.config = load_config(self.folder)
        self.tensors = index_tensors(self.folder)
        # opened up front so reader threads share them without locking (preadv is positional)
        self._fds = {f: os.open(f, os.O_RDONLY) for f in sorted({r.file for r in self.tensors.values()})}

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def read_rows(self, name: str, start: int = 0, count: int | None = None) -> np.ndarray:
        """Rows [start, start+count) of a tensor viewed as (n_rows, row_len), converted to float32."""
        ref = self.tensors[name]
        count = ref.n_rows - start if count is None else count
        store, itemsize = SAFETENSORS_DTYPES[ref.dtype]
        buf = np.empty((count, ref.row_len), dtype=store)
        offset = ref.offset + start * ref.row_len * itemsize
        got = os.preadv(self._fds[ref.file], [memoryview(buf).cast("B")], offset)
        if got != buf.nbytes:
            raise CheckpointError(f"{ref.file}: truncated while reading {name} (got {got} of {buf.nbytes} bytes)",
                                  "download this shard again")
        return to_float32(buf, ref.dtype)


def to_float32(buf: np.ndarray, dtype: str) -> np.ndarray:
    """Exact widening of F32/F16/BF16 storage to float32 (BF16 is the top half of an F32)."""
    if dtype == "BF16":
        return (buf.astype(np.uint32) << 16).view(np.float32)
    return buf.astype(np.float32, copy=False)
