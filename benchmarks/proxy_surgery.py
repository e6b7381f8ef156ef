"""Model surgery for the proxy (benchmarks/proxy.py): a llama GGUF -> Hugging Face llama tensors -> dense Qwen3 ->
zero-padded to K-quant-friendly widths; the tokenizer.json rebuilt from the GGUF. NumPy only; tested by
tests/test_proxy_surgery.py (unpermute against llama.cpp's own converter, padding against transformers' logits).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import gguf
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from marco_gguf.hf.tokenizer import SMOLLM_PRE_TOKENIZER

# GGUF name (blk.N. stripped) -> Hugging Face name under model.layers.N. (llama.cpp's tensor_mapping.py, llama rows)
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
MODEL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


@dataclass(frozen=True)
class Shape:
    """A llama/Qwen3 model's sizes."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ff: int
    vocab: int
    rope_theta: float
    rms_eps: float
    context: int


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf.py's LlamaModel.permute (q and k rows reordered for llama.cpp's rotary layout:
    per head, the (x, x + d/2) pairs of Hugging Face's rotate_half made adjacent)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_llama_gguf(path: Path) -> tuple[Shape, dict[str, np.ndarray]]:
    """A llama-architecture GGUF's sizes and every tensor dequantized to float32 under its Hugging Face name,
    q and k un-permuted."""
    r = GGUFReader(path)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.ggml.")}
    heads, hidden = int(f["llama.attention.head_count"]), int(f["llama.embedding_length"])
    shape = Shape(
        layers=int(f["llama.block_count"]),
        hidden=hidden,
        heads=heads,
        kv_heads=int(f.get("llama.attention.head_count_kv", heads)),
        head_dim=int(f.get("llama.rope.dimension_count", hidden // heads)),
        ff=int(f["llama.feed_forward_length"]),
        vocab=len(r.fields["tokenizer.ggml.tokens"].data),
        rope_theta=float(f.get("llama.rope.freq_base", 10000.0)),
        rms_eps=float(f["llama.attention.layer_norm_rms_epsilon"]),
        context=int(f["llama.context_length"]),
    )
    out = {}
    for t in r.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(d) for d in reversed(t.shape)])
        parts = t.name.removesuffix(".weight").split(".")
        if parts[0] == "blk":
            kind = parts[2]
            if kind == "attn_q":
                w = unpermute(w, shape.heads)
            elif kind == "attn_k":
                w = unpermute(w, shape.kv_heads)
            out[f"model.layers.{parts[1]}.{LAYER_NAMES[kind]}.weight"] = w
        else:
            out[f"{MODEL_NAMES[parts[0]]}.weight"] = w
    return shape, out


def to_qwen3(shape: Shape, tensors: Mapping[str, np.ndarray], q_scale: np.ndarray, k_scale: np.ndarray) -> dict:
    """A llama's tensors as a dense Qwen3's: the same weights plus per-layer q_norm/k_norm weights. Qwen3
    RMS-normalises each head's q and k, llama does not; a norm weight equal to a head's typical RMS gives back
    q and k of typical size (exact for a head whose RMS is that value). `q_scale`, `k_scale`: [layers] or
    [layers, head_dim]."""
    out = dict(tensors)
    for i in range(shape.layers):
        for name, scale in (("q_norm", q_scale[i]), ("k_norm", k_scale[i])):
            out[f"model.layers.{i}.self_attn.{name}.weight"] = np.broadcast_to(
                np.asarray(scale, np.float32), (shape.head_dim,)
            ).copy()
    return out


def head_slots(heads: int, kv_heads: int, new_heads: int) -> list[int]:
    """New position of each query head when `heads` become `new_heads` over the same kv heads: q head h reads kv
    head h // (heads / kv_heads) before and slot // (new_heads / kv_heads) after, so each group keeps its
    heads first and gains zero heads at its end."""
    old_group, new_group = heads // kv_heads, new_heads // kv_heads
    return [(h // old_group) * new_group + h % old_group for h in range(heads)]


def pad(shape: Shape, tensors: Mapping[str, np.ndarray], *, hidden: int, heads: int) -> tuple[Shape, dict]:
    """Zero-pad the hidden size and the query heads of a dense Qwen3 without changing its function.

    New hidden dimensions are zero in the embeddings and in every matrix that writes the residual stream
    (o_proj, down_proj rows), so they stay zero; RMSNorm over the wider vector then divides by
    sqrt(old/new) x the old RMS, which the norm weights (times sqrt(old/new)) and eps (times old/new) undo
    exactly. A new query head has zero q_proj rows (its q is 0, RMSNorm keeps it 0) and zero o_proj columns,
    so whatever it attends to adds nothing."""
    if heads % shape.kv_heads or heads < shape.heads or hidden < shape.hidden:
        raise ValueError(f"cannot pad {shape.heads} heads over {shape.kv_heads} kv heads to {heads}, or shrink")
    h0, d = shape.hidden, shape.head_dim
    norm_scale = np.float32(math.sqrt(h0 / hidden))
    rows = np.concatenate([np.arange(s * d, (s + 1) * d) for s in head_slots(shape.heads, shape.kv_heads, heads)])

    def widen(w: np.ndarray, n_rows: int | None = None, row_index: np.ndarray | None = None) -> np.ndarray:
        new = np.zeros((n_rows if n_rows is not None else w.shape[0], hidden), np.float32)
        new[row_index if row_index is not None else slice(0, w.shape[0]), :h0] = w
        return new

    out = {}
    for name, w in tensors.items():
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            out[name] = np.concatenate([w * norm_scale, np.zeros(hidden - h0, np.float32)])
        elif name.endswith("q_proj.weight"):
            out[name] = widen(w, heads * d, rows)
        elif name.endswith("o_proj.weight"):
            new = np.zeros((hidden, heads * d), np.float32)
            new[:h0, rows] = w
            out[name] = new
        elif name.endswith("down_proj.weight"):
            out[name] = np.concatenate([w, np.zeros((hidden - h0, w.shape[1]), np.float32)])
        elif w.ndim == 2 and w.shape[1] == h0:  # embeddings, lm_head, k, v, gate, up: new zero columns
            out[name] = widen(w)
        else:  # q_norm, k_norm: per head, unchanged
            out[name] = w
    return replace(shape, hidden=hidden, heads=heads, rms_eps=shape.rms_eps * h0 / hidden), out


def qwen3_config(shape: Shape, *, bos: int, eos: int, tied: bool) -> dict:
    """config.json of a dense Qwen3ForCausalLM of this shape (transformers 4.57 spelling, as Qwen3 publishes)."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "hidden_size": shape.hidden,
        "initializer_range": 0.02,
        "intermediate_size": shape.ff,
        "max_position_embeddings": shape.context,
        "max_window_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "num_key_value_heads": shape.kv_heads,
        "rms_norm_eps": shape.rms_eps,
        "rope_scaling": None,
        "rope_theta": shape.rope_theta,
        "sliding_window": None,
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": shape.vocab,
    }


def tokenizer_files(path: Path) -> tuple[dict, dict, dict]:
    """tokenizer.json, tokenizer_config.json and the special ids rebuilt from a GGUF's gpt2/smollm vocabulary:
    tokens and merges in its order, CONTROL tokens as special added tokens, its chat template."""
    r = GGUFReader(path)
    f = {k: v.contents() for k, v in r.fields.items() if k.startswith("tokenizer.")}
    if (f["tokenizer.ggml.model"], f["tokenizer.ggml.pre"]) != ("gpt2", "smollm"):
        raise ValueError(f"{path}: tokenizer {f['tokenizer.ggml.model']}/{f['tokenizer.ggml.pre']}, not gpt2/smollm")
    tokens, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    control = [i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL]
    added = [
        {"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False}
        | {"normalized": False, "special": True}
        for i in control
    ]
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": SMOLLM_PRE_TOKENIZER,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": list(f["tokenizer.ggml.merges"]),
        },
    }
    ids = {k: int(f[f"tokenizer.ggml.{k}_token_id"]) for k in ("bos", "eos", "unknown", "padding")}
    config = {
        "add_bos_token": bool(f.get("tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": False,
        "bos_token": tokens[ids["bos"]],
        "eos_token": tokens[ids["eos"]],
        "unk_token": tokens[ids["unknown"]],
        "pad_token": tokens[ids["padding"]],
        "chat_template": f["tokenizer.chat_template"],
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer",
    }
    return doc, config, ids


def write_tokenizer(path: Path, folder: Path) -> dict:
    doc, config, ids = tokenizer_files(path)
    (folder / "tokenizer.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return ids


def off_grid(shape: Shape, tensors: Mapping[str, np.ndarray], *, sigma: float = 0.25, seed: int = 0) -> dict:
    """The same function with every layer matrix moved off the shipped file's Q4_1 grid.

    SmolLM2's GGUF stores its layers as Q4_1: dequantized, each block of 32 is exactly d x q + m, so Q4_1
    reproduces them with zero error and the K-quants look better than on any real model. Random per-channel
    scales (log-normal, `sigma`) that cancel in pairs keep the logits and break the grid within every block:
    an RMSNorm weight x s_j with the columns it feeds / s_j (q, k, v; gate, up), a v row x c_i with the o_proj
    columns that read it / c_i, an up row x u_i with the down column / u_i (SwiGLU is linear in up)."""
    rng = np.random.default_rng(seed)
    out = dict(tensors)

    def factors(n: int) -> np.ndarray:
        return np.exp(rng.normal(0.0, sigma, n)).astype(np.float32)

    d, group = shape.head_dim, shape.heads // shape.kv_heads
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        s, t = factors(shape.hidden), factors(shape.hidden)
        out[p + "input_layernorm.weight"] = tensors[p + "input_layernorm.weight"] * s
        for m in ("q_proj", "k_proj", "v_proj"):
            out[p + f"self_attn.{m}.weight"] = tensors[p + f"self_attn.{m}.weight"] / s
        c = factors(shape.kv_heads * d)
        out[p + "self_attn.v_proj.weight"] = out[p + "self_attn.v_proj.weight"] * c[:, None]
        reads = np.concatenate([c[(h // group) * d : (h // group + 1) * d] for h in range(shape.heads)])
        out[p + "self_attn.o_proj.weight"] = tensors[p + "self_attn.o_proj.weight"] / reads
        out[p + "post_attention_layernorm.weight"] = tensors[p + "post_attention_layernorm.weight"] * t
        u = factors(shape.ff)
        out[p + "mlp.gate_proj.weight"] = tensors[p + "mlp.gate_proj.weight"] / t
        out[p + "mlp.up_proj.weight"] = tensors[p + "mlp.up_proj.weight"] / t * u[:, None]
        out[p + "mlp.down_proj.weight"] = tensors[p + "mlp.down_proj.weight"] / u
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}
