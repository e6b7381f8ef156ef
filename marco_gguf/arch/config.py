"""`MarcoConfig`: the hyperparameters llama.cpp's qwen3moe needs, as one frozen value.

Read from a checkpoint's config.json by `hf.checkpoint.load_config` (which normalises transformers 4.x and 5.x
spellings); the tensor table in `qwen3moe` derives every shape from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Dims:
    """The sizes every tensor shape is made of: what both a config.json and a GGUF's qwen3moe.* keys give."""

    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_experts: int
    expert_ff: int
    vocab_size: int

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


@dataclass(frozen=True)
class MarcoConfig(Dims):
    """The hyperparameters llama.cpp's qwen3moe needs, normalised over transformers 4.x/5.x spellings."""

    n_experts_used: int
    ff: int | None  # dense intermediate_size: unused by Marco, but llama.cpp's converter records it
    max_positions: int
    rope_theta: float
    rms_eps: float
    tie_embeddings: bool
    bos_token_id: int | None
    eos_token_id: int | list[int] | None
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)
