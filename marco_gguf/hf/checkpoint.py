"""Hugging Face checkpoint reading: config normalisation and lazy, bounded-memory safetensors access.

Tensors are read row-block by row-block with `os.preadv` into fresh buffers (not mmap), so the
resident set stays at the size of one block whatever the model size.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Self

import numpy as np

from marco_gguf.arch.config import MarcoConfig
from marco_gguf.base.errors import CheckpointError, UnsupportedModelError
from marco_gguf.base.jsonfields import Fields, load_json_object
from marco_gguf.hf.safetensors_format import WEIGHT_DTYPES, TensorRef, read_safetensors_header, to_float32

SUPPORTED_ARCHITECTURE = "Qwen3MoeForCausalLM"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


HINT = "compare with Marco's published config.json"


def _find(raw: Mapping[str, Any], *keys: str) -> str:
    """The first of `keys` present and not null (transformers 4.x and 5.x spell some keys differently)."""
    return next((k for k in keys if raw.get(k) is not None), keys[-1])


def _rope(f: Fields) -> float:
    # transformers 5.x nests rope settings in rope_parameters; 4.x uses rope_theta + rope_scaling
    key = _find(f.data, "rope_parameters", "rope_scaling")
    params = f.sub(key)
    rope_type = params.data.get("rope_type", params.data.get("type", "default"))
    if rope_type not in ("default", None):
        raise UnsupportedModelError(
            f"{f.path}: rope type {rope_type!r} is not supported; Marco models use plain RoPE ('default')",
            "convert an unmodified Marco checkpoint",
        )
    if params.data.get("rope_theta") is not None:
        return params.number("rope_theta")
    if f.data.get("rope_theta") is None:
        raise UnsupportedModelError(f"{f.path}: no rope_theta in config", "add rope_theta (Marco: 1000000.0)")
    return f.number("rope_theta")


def _refuse_unrepresentable(f: Fields) -> None:
    archs = f.list("architectures", str, default=[])
    if archs != [SUPPORTED_ARCHITECTURE]:
        raise UnsupportedModelError(
            f"{f.path}: architecture {archs or f.data.get('model_type')!r} is not {SUPPORTED_ARCHITECTURE}",
            "marco-gguf converts Marco-MoE (qwen3_moe) checkpoints only; use llama.cpp's convert_hf_to_gguf.py for others",
        )
    if f.bool("norm_topk_prob", default=True) is False:
        raise UnsupportedModelError(
            f"{f.path}: norm_topk_prob is false, but llama.cpp's qwen3moe always renormalises the top-k weights",
            "this checkpoint cannot be represented exactly in GGUF",
        )
    dense, step = f.list("mlp_only_layers", int, default=[]), f.int("decoder_sparse_step", default=1)
    if dense or step != 1:
        raise UnsupportedModelError(
            f"{f.path}: dense layers (mlp_only_layers={dense}, decoder_sparse_step={step}) are not supported; "
            "every layer must be MoE",
            "llama.cpp's qwen3moe expects experts in every layer",
        )
    for key in ("attention_bias", "qkv_bias"):
        if f.bool(key, default=False):
            raise UnsupportedModelError(f"{f.path}: {key} is true; qwen3moe has no attention biases")
    if f.bool("use_qk_norm", default=True) is False:
        raise UnsupportedModelError(f"{f.path}: use_qk_norm is false; qwen3moe always applies q/k norms")
    if f.int("shared_expert_intermediate_size", default=0):
        raise UnsupportedModelError(f"{f.path}: shared experts are not part of qwen3moe")


def _token_ids(f: Fields, vocab_size: int) -> None:
    """Special-token ids must be ids of this vocabulary: gguf-py's SpecialVocab fails on a negative one and
    silently drops one past the vocabulary, which would write a file without that token."""
    for typ in ("bos", "eos", "pad", "unk", "sep", "cls", "mask"):
        key = f"{typ}_token_id"
        value = f.data.get(key)
        if isinstance(value, list) and typ == "eos":  # transformers allows several end tokens
            f.list(key, int)
            bad = [v for v in value if not 0 <= v < vocab_size]
            if bad:
                raise f.fail(key, value, f"token ids from 0 to {vocab_size - 1:,} (vocab_size)")
        else:
            f.int(key, hi=vocab_size - 1, default=None)


def load_config(folder: Path) -> MarcoConfig:
    """Read and validate `config.json`, accepting both transformers 4.x and 5.x spellings.

    Keys llama.cpp's qwen3moe does not use (dtype, initializer_range, use_cache, router_aux_loss_coef,
    output_router_logits, sliding_window, ...) are not read, so they cannot fail a conversion."""
    path = folder / "config.json"
    top = Fields(
        load_json_object(path, CheckpointError, "SOURCE must be a Hugging Face checkpoint folder"),
        path,
        CheckpointError,
        HINT,
    )
    raw = {**top.data, **top.obj("text_config", default={})}
    f = Fields(raw, path, CheckpointError, HINT)
    _refuse_unrepresentable(f)
    n_heads, hidden = f.int("num_attention_heads", lo=1), f.int("hidden_size", lo=1)
    n_kv_heads = f.int("num_key_value_heads", lo=1, hi=n_heads, default=n_heads)
    if n_heads % n_kv_heads:
        raise f.fail("num_key_value_heads", n_kv_heads, f"a divisor of num_attention_heads ({n_heads})")
    n_experts = f.int(_find(raw, "num_local_experts", "num_experts"), lo=1)
    vocab_size = f.int("vocab_size", lo=1)
    _token_ids(f, vocab_size)
    return MarcoConfig(
        n_layers=f.int("num_hidden_layers", lo=1),
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=f.int("head_dim", lo=1, default=hidden // n_heads),
        n_experts=n_experts,
        n_experts_used=f.int("num_experts_per_tok", lo=1, hi=n_experts),
        expert_ff=f.int("moe_intermediate_size", lo=1),
        ff=f.int("intermediate_size", default=None),
        vocab_size=vocab_size,
        max_positions=f.int("max_position_embeddings", lo=1, default=32768),
        rope_theta=_rope(f),
        rms_eps=f.number("rms_norm_eps", default=1e-6, hi=1.0),
        tie_embeddings=f.bool("tie_word_embeddings", default=False),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id"),
        raw=raw,
    )


def _weight_map(index: Path, folder: Path) -> dict[str, str]:
    """The index's tensor -> shard map: an object of plain shard file names in this folder."""
    f = Fields(
        load_json_object(index, CheckpointError, "download the index again"),
        index,
        CheckpointError,
        "download model.safetensors.index.json again",
    )
    weight_map = f.obj("weight_map")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or Path(shard).name != shard or shard in (".", ".."):
            raise f.sub("weight_map").fail(name, shard, "the file name of a shard in this folder")
    return weight_map


def _shard_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = _weight_map(index, folder)
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            count = sum(1 for v in weight_map.values() if v == missing[0])
            raise CheckpointError(
                f"{folder / missing[0]}: missing shard ({count} tensors listed in {INDEX_NAME})"
                + (f"; also missing: {', '.join(missing[1:])}" if missing[1:] else ""),
                "download the missing shard(s) into the checkpoint folder",
            )
        return [folder / f for f in files], weight_map
    if (folder / SINGLE_NAME).is_file():
        return [folder / SINGLE_NAME], None
    raise CheckpointError(
        f"{folder}: no {SINGLE_NAME} or {INDEX_NAME}",
        "SOURCE must hold safetensors weights (pytorch_model.bin is not supported)",
    )


def index_tensors(folder: Path) -> dict[str, TensorRef]:
    """Map every tensor name to its location, checking the shard index against the shards' own headers."""
    files, weight_map = _shard_files(folder)
    refs: dict[str, TensorRef] = {}
    for file in files:
        for name, ref in read_safetensors_header(file).items():
            if name in refs:
                raise CheckpointError(
                    f"{file}: holds tensor {name}, which {refs[name].file.name} holds too",
                    "shards from different downloads are mixed: download them again",
                )
            if weight_map is not None and weight_map.get(name) != file.name:
                raise CheckpointError(
                    f"{file}: holds tensor {name}, which {INDEX_NAME} places in {weight_map.get(name)}",
                    "the index and shards are from different downloads: download them again",
                )
            refs[name] = ref
    if weight_map is not None and (absent := sorted(set(weight_map) - set(refs))):
        raise CheckpointError(
            f"{folder / weight_map[absent[0]]}: lacks {len(absent)} tensor(s) its index lists, e.g. {absent[0]}",
            "download this shard again",
        )
    return refs


class TensorReader:
    """Row-block reads as float32 of the tensors `tensors` (name -> where it lives), safe across threads."""

    def __init__(self, tensors: Mapping[str, TensorRef]) -> None:
        self.tensors = dict(tensors)
        # opened up front so reader threads share them without locking (preadv is positional); os.O_BINARY
        # matters on Windows, where os.preadv does not exist and each thread reads through its own handle
        flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
        self._fds = {f: os.open(f, flags) for f in sorted({r.file for r in self.tensors.values()})}
        self._local, self._handles, self._lock = threading.local(), list[BinaryIO](), threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        with self._lock:
            for h in self._handles:
                h.close()
            self._handles.clear()

    def _read_at(self, file: Path, view: memoryview, offset: int) -> int:
        """Bytes read into `view` from `offset` of `file`: one positional os.preadv where the OS has it (Linux,
        macOS), else (Windows) seek + readinto on this thread's own handle, so threads never share a position."""
        if hasattr(os, "preadv"):
            return os.preadv(self._fds[file], [view], offset)
        handles = self._local.__dict__.setdefault("handles", {})
        if file not in handles:
            handles[file] = open(file, "rb")  # noqa: SIM115  (closed by close(), with every thread's)
            with self._lock:
                self._handles.append(handles[file])
        f = handles[file]
        f.seek(offset)
        return f.readinto(view) or 0

    def read_rows(self, name: str, start: int = 0, count: int | None = None) -> np.ndarray:
        """Rows [start, start+count) of a tensor viewed as (n_rows, row_len), converted to float32."""
        ref = self.tensors[name]
        count = ref.n_rows - start if count is None else count
        store, itemsize = WEIGHT_DTYPES[ref.dtype]
        buf = np.empty((count, ref.row_len), dtype=store)
        offset = ref.offset + start * ref.row_len * itemsize
        got = self._read_at(ref.file, buf.data.cast("B"), offset)
        if got != buf.nbytes:
            raise CheckpointError(
                f"{ref.file}: truncated while reading {name} (got {got} of {buf.nbytes} bytes)",
                "download this file again",
            )
        return to_float32(buf, ref.dtype)


class TensorFiles(TensorReader):
    """A checkpoint folder's safetensors, indexed and open for row-block reads as float32 (no config read:
    `Checkpoint` adds Marco's, `upcycle` reads a dense Qwen3's)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        if not self.folder.exists():
            raise CheckpointError(f"{self.folder}: no such folder", "SOURCE must be a Hugging Face checkpoint folder")
        if not self.folder.is_dir():
            raise CheckpointError(
                f"{self.folder}: is a file, not a folder", "SOURCE must be a Hugging Face checkpoint folder"
            )
        self._read_config()  # before the index: a wrong model is named before a damaged shard
        super().__init__(index_tensors(self.folder))

    def _read_config(self) -> None:
        """Subclasses read and validate config.json here."""


class Checkpoint(TensorFiles):
    """An open Marco checkpoint: validated config, tensor index and row-block reads as float32."""

    config: MarcoConfig

    def _read_config(self) -> None:
        self.config = load_config(self.folder)
