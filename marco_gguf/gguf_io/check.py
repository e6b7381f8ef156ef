"""What llama.cpp's qwen3moe loader demands of a GGUF beyond a well-formed header, checked before it sees it.

llama.cpp aborts the whole process (GGML_ASSERT, SIGABRT) on some of these, during loading or on the
first decode, and throws on the rest; either way `chat` would die or fail deep inside llama.cpp, so
`read_info` refuses them first, naming the key or tensor, what it holds and what llama.cpp needs.
Sources (vendored llama.cpp): src/llama-model-loader.cpp (GKV::get_kv: a key's type must match
exactly), src/llama-model.cpp load_hparams (asserts on layer and expert counts, rope scaling type),
src/models/qwen3moe.cpp (required keys, the tensor table, head-size asserts in the graph),
src/llama-vocab.cpp load (token list, types, scores, merges; GGML_ASSERT that tokens are unique).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from marco_gguf.arch.chat_template import TEMPLATE_KEY, compile_template
from marco_gguf.arch.config import Dims
from marco_gguf.arch.qwen3moe import (
    ARCH_KEY,
    KINDS,
    TOKENIZER_MODEL,
    TOKENIZER_PRE,
    gguf_tensor_shapes,
    pretokenizer_allowed,
)
from marco_gguf.base.errors import GGUFFileError
from marco_gguf.gguf_io.reader import DAMAGED, Header

LLAMA_MAX_LAYERS = 512  # src/llama-hparams.h
LLAMA_MAX_EXPERTS = 1024  # src/llama-hparams.h
# rope scaling names llama.cpp knows (llama_rope_scaling_type_from_string); another one is a GGML_ASSERT
ROPE_SCALING = ("none", "linear", "yarn", "longrope")

# qwen3moe.<key> -> (type llama.cpp reads it as, required); source: load_hparams + qwen3moe.cpp load_arch_hparams
HPARAM_TYPES: dict[str, tuple[V, bool]] = {
    "context_length": (V.UINT32, True),
    "embedding_length": (V.UINT32, True),
    "block_count": (V.UINT32, True),
    "feed_forward_length": (V.UINT32, False),
    "attention.head_count": (V.UINT32, True),
    "attention.head_count_kv": (V.UINT32, False),
    "expert_count": (V.UINT32, True),
    "expert_used_count": (V.UINT32, True),
    "expert_feed_forward_length": (V.UINT32, False),
    "expert_group_count": (V.UINT32, False),
    "expert_group_used_count": (V.UINT32, False),
    "nextn_predict_layers": (V.UINT32, False),
    "attention.layer_norm_rms_epsilon": (V.FLOAT32, True),
    "attention.key_length": (V.UINT32, False),
    "attention.value_length": (V.UINT32, False),
    "rope.dimension_count": (V.UINT32, False),
    "rope.freq_base": (V.FLOAT32, False),
    "rope.scaling.type": (V.STRING, False),
    "rope.scaling.factor": (V.FLOAT32, False),
    "rope.scaling.original_context_length": (V.UINT32, False),
    "rope.scaling.finetuned": (V.BOOL, False),
}
# tokenizer.ggml.<key> -> type; source: llama-vocab.cpp load (special ids are read as uint32)
TOKENIZER_TYPES: dict[str, V] = {
    "model": V.STRING,
    "pre": V.STRING,
    "tokens": V.ARRAY,
    "token_type": V.ARRAY,
    "merges": V.ARRAY,
    "scores": V.ARRAY,
    "add_bos_token": V.BOOL,
    "add_eos_token": V.BOOL,
    "add_sep_token": V.BOOL,
    **{f"{k}_token_id": V.UINT32 for k in ("bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "mask")},
}
# other keys llama.cpp or our runtime reads, with their types; source: llama-model-loader.cpp, llama-vocab.cpp
GENERAL_TYPES: dict[str, V] = {
    ARCH_KEY: V.STRING,
    "general.name": V.STRING,
    "general.file_type": V.UINT32,
    "general.quantization_version": V.UINT32,
    TEMPLATE_KEY: V.STRING,
}
# matrix types ggml's CPU backend multiplies (and gets rows of); Q8_1/Q8_K are only dot-product partners
MATRIX_TYPES = frozenset(q for q in Q if q.name not in ("Q8_1", "Q8_K", "I8", "I16", "I32", "I64", "F64"))
VECTOR_TYPES = frozenset({Q.F32})  # norms: every converter and quantizer keeps them F32


class _Check:
    def __init__(self, path: Path, header: Header) -> None:
        self.path, self.h = path, header

    def fail(self, what: str, hint: str = DAMAGED) -> None:
        raise GGUFFileError(f"{self.path}: {what}", hint)

    def typed(self, key: str, vtype: V, required: bool, item: tuple[V, ...] = ()) -> Any:
        if key not in self.h.fields:
            if required:
                self.fail(f"missing key {key} (llama.cpp's qwen3moe needs it)")
            return None
        got = self.h.types[key]
        if got != vtype or (item and self.h.item_types.get(key) not in item):
            found = got.name + (f" of {self.h.item_types[key].name}" if key in self.h.item_types else "")
            want = vtype.name + (f" of {' or '.join(i.name for i in item)}" if item else "")
            self.fail(f"key {key} is {found}, llama.cpp reads it as {want}")
        return self.h.fields[key]


def _hparams(c: _Check, arch: str) -> dict[str, Any]:
    hp = {k: c.typed(f"{arch}.{k}", t, req) for k, (t, req) in HPARAM_TYPES.items()}
    for k, lo, hi in (
        ("block_count", 1, LLAMA_MAX_LAYERS),
        ("expert_count", 1, LLAMA_MAX_EXPERTS),
        ("expert_used_count", 1, hp["expert_count"]),
        ("embedding_length", 1, None),
        ("attention.head_count", 1, None),
        ("context_length", 1, None),
    ):
        if hp[k] < lo or (hi is not None and hp[k] > hi):
            c.fail(
                f"{arch}.{k} is {hp[k]}, llama.cpp needs {lo}..{hi if hi is not None else 'any'}"
                + (f" ({arch}.expert_count)" if k == "expert_used_count" else "")
            )
    if (hp["expert_group_count"] or 0) >= hp["expert_count"] or (hp["nextn_predict_layers"] or 0) > hp["block_count"]:
        c.fail(f"{arch}.expert_group_count or nextn_predict_layers out of range (llama.cpp asserts on them)")
    for k in ("attention.layer_norm_rms_epsilon", "rope.freq_base"):
        if hp[k] is not None and not (math.isfinite(hp[k]) and hp[k] > 0):
            c.fail(f"{arch}.{k} is {hp[k]}, expected a positive finite number")
    if hp["rope.scaling.type"] is not None and hp["rope.scaling.type"] not in ROPE_SCALING:
        c.fail(f"{arch}.rope.scaling.type is {hp['rope.scaling.type']!r}, llama.cpp knows {', '.join(ROPE_SCALING)}")
    return hp


def _geometry(c: _Check, arch: str, hp: dict[str, Any], n_vocab: int) -> Dims:
    """Head and expert sizes as llama.cpp derives them (defaults from load_hparams and qwen3moe.cpp)."""
    n_embd, n_head = hp["embedding_length"], hp["attention.head_count"]
    n_head_kv = hp["attention.head_count_kv"] if hp["attention.head_count_kv"] is not None else n_head
    head_k = hp["attention.key_length"] if hp["attention.key_length"] is not None else n_embd // n_head
    head_v = hp["attention.value_length"] if hp["attention.value_length"] is not None else n_embd // n_head
    n_rot = hp["rope.dimension_count"] if hp["rope.dimension_count"] is not None else head_k
    if n_head_kv < 1 or n_head % n_head_kv:
        c.fail(f"{arch}.attention.head_count_kv is {n_head_kv}: it must divide head_count {n_head}")
    if not head_k == head_v == n_rot or head_k < 2 or head_k % 2:
        c.fail(
            f"{arch}: key_length {head_k}, value_length {head_v} and rope.dimension_count {n_rot} must be one "
            "even head size (llama.cpp's qwen3moe graph asserts it)"
        )
    ff = hp["expert_feed_forward_length"]
    if ff is None:
        ff = (hp["feed_forward_length"] or 0) // hp["expert_used_count"]
    if ff < 1:
        c.fail(f"{arch}.expert_feed_forward_length is missing or 0: the expert matrices have no size")
    return Dims(
        n_layers=hp["block_count"],
        hidden=n_embd,
        n_heads=n_head,
        n_kv_heads=n_head_kv,
        head_dim=head_k,
        n_experts=hp["expert_count"],
        expert_ff=ff,
        vocab_size=n_vocab,
    )


def expected_tensors(d: Dims) -> dict[str, tuple[tuple[int, ...], frozenset[Q]]]:
    """GGUF name -> (numpy-order shape, allowed types), as qwen3moe.cpp load_arch_tensors creates them: the
    spec's table, with the optional untied output matrix."""
    return {
        name: (shape, VECTOR_TYPES if len(shape) == 1 else MATRIX_TYPES)
        for name, shape in gguf_tensor_shapes(d, with_output=True).items()
    }


def _tensors(c: _Check, d: Dims) -> None:
    want = expected_tensors(d)
    have = {t.name: t for t in c.h.tensors}
    optional = {k.name() for k in KINDS if k.optional}  # absent when tied
    for name in have.keys() - want.keys():
        c.fail(f"unexpected tensor {name!r} for a {d.n_layers}-layer qwen3moe (llama.cpp refuses extra tensors)")
    for name, (shape, types) in want.items():
        t = have.get(name)
        if t is None:
            if name not in optional:
                c.fail(f"missing tensor {name!r} (expected shape {list(shape)})")
        elif t.shape != shape:
            c.fail(f"tensor {name!r} has shape {list(t.shape)}, the qwen3moe.* keys imply {list(shape)}")
        elif t.type not in types:
            c.fail(
                f"tensor {name!r} has type {t.type.name}, which llama.cpp cannot use there "
                f"(expected {'F32' if types == VECTOR_TYPES else 'a matrix type'})"
            )


def _tokens(c: _Check) -> int:
    p = "tokenizer.ggml."
    for k, t in TOKENIZER_TYPES.items():
        c.typed(p + k, t, False)
    tokens = c.typed(p + "tokens", V.ARRAY, True, (V.STRING,))
    if (model := c.typed(p + "model", V.STRING, True)) != TOKENIZER_MODEL:
        c.fail(f"{p}model is {model!r}, Marco's tokenizer is {TOKENIZER_MODEL!r} (byte-level BPE)")
    if (pre := c.typed(p + "pre", V.STRING, False)) is not None and not pretokenizer_allowed(pre, len(tokens)):
        c.fail(f"{p}pre is {pre!r}, Marco's pre-tokenizer is {TOKENIZER_PRE!r}")
    c.typed(p + "merges", V.ARRAY, True, (V.STRING,))
    for k, item in (("token_type", (V.INT32,)), ("scores", (V.FLOAT32, V.INT32))):
        vals = c.typed(p + k, V.ARRAY, False, item)
        if vals is not None and len(vals) != len(tokens):
            c.fail(f"{p}{k} has {len(vals):,} entries for {len(tokens):,} tokens")
    # llama-vocab.cpp renames empty tokens, then GGML_ASSERTs that no two tokens are the same string
    names, seen = [t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)], set[str]()
    for name in names:
        if name in seen:
            c.fail(f"{p}tokens lists {name!r} more than once (llama.cpp aborts on a repeated token)")
        seen.add(name)
    for k in (k for k, t in TOKENIZER_TYPES.items() if t == V.UINT32):
        if (tid := c.h.fields.get(p + k)) is not None and tid >= len(tokens):
            c.fail(f"{p}{k} is {tid}, but there are only {len(tokens):,} tokens")
    return len(tokens)


def _template(c: _Check) -> None:
    # llama-cpp-python compiles the template while loading; a syntax error would escape as a jinja2 traceback
    import jinja2

    source = c.h.fields.get(TEMPLATE_KEY)
    if source is not None and "\0" in source:  # llama.cpp's C API hands it out cut at the NUL
        c.fail(f"{TEMPLATE_KEY} contains a NUL character at {source.index(chr(0))}")
    if source is not None:
        try:
            compile_template(source)
        except jinja2.TemplateError as e:
            line = getattr(e, "lineno", None)
            c.fail(f"{TEMPLATE_KEY} is not a valid Jinja template ({e}{f', line {line}' if line else ''})")


def check_qwen3moe(path: str | Path, header: Header, arch: str) -> None:
    """Raise GGUFFileError for anything in a qwen3moe GGUF that llama.cpp would abort or fail on while loading."""
    c = _Check(Path(path), header)
    for key, vtype in GENERAL_TYPES.items():
        c.typed(key, vtype, key == ARCH_KEY)
    _template(c)
    n_vocab = _tokens(c)
    _tensors(c, _geometry(c, arch, _hparams(c, arch), n_vocab))
