"""The qwen3moe architecture as data: HF -> GGUF tensor table, expert stacking plan, hparams -> keys.

Experts are never stacked in memory: a stacked GGUF tensor is planned as an ordered list of row
ranges of source tensors ("pieces"), which the writer streams one piece at a time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gguf
from gguf import MODEL_TENSOR as T

from .checkpoint import MarcoConfig, TensorRef
from .errors import TensorError
from .qwen_vocab import CHATML_TEMPLATE, QWEN3_PRETOKENIZER_REGEX

ARCH = gguf.MODEL_ARCH.QWEN3MOE
ARCH_NAME = gguf.MODEL_ARCH_NAMES[ARCH]  # "qwen3moe"

# --- Marco and Qwen3 facts, read by the runtime, the exports and the checks (source: ../shared/MARCO.md and
# the models' config and tokenizer files). The two long texts live in qwen_vocab.py, which must run on the
# standard library alone (loaded by path), and are re-exported here.
DEFAULT_CTX = 8192  # the context Marco was fine-tuned with (max_position_embeddings is 32768)
END_OF_TURN = ("<|im_end|>", "<|endoftext|>")  # config says eos 151643, the chat format ends turns with 151645
TOKENIZER_MODEL = "gpt2"  # byte-level BPE
TOKENIZER_PRE = "qwen2"  # llama.cpp's name for the Qwen2/Qwen3 pre-tokenizer regex below
PRETOKENIZER_REGEX = QWEN3_PRETOKENIZER_REGEX
CHATML = CHATML_TEMPLATE  # Qwen3's non-thinking ChatML with tool calls: the format Marco-Instruct uses

# HF suffix under model.layers.{L}. -> GGUF tensor; source: gguf-py tensor_mapping.py, qwen3moe rows
BLOCK_TENSORS: tuple[tuple[str, T], ...] = (
    ("input_layernorm.weight", T.ATTN_NORM),
    ("self_attn.q_proj.weight", T.ATTN_Q),
    ("self_attn.k_proj.weight", T.ATTN_K),
    ("self_attn.v_proj.weight", T.ATTN_V),
    ("self_attn.o_proj.weight", T.ATTN_OUT),
    ("self_attn.q_norm.weight", T.ATTN_Q_NORM),
    ("self_attn.k_norm.weight", T.ATTN_K_NORM),
    ("post_attention_layernorm.weight", T.FFN_NORM),
    ("mlp.gate.weight", T.FFN_GATE_INP),
)
# per-expert projection -> stacked GGUF tensor (ne {H, I, E} for gate/up, {I, H, E} for down)
EXPERT_TENSORS: tuple[tuple[str, T], ...] = (
    ("gate_proj", T.FFN_GATE_EXP),
    ("up_proj", T.FFN_UP_EXP),
    ("down_proj", T.FFN_DOWN_EXP),
)
EMBEDDINGS, FINAL_NORM, LM_HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"
# buffers some exporters leave behind; llama.cpp's converter skips them too
IGNORED = re.compile(r".*\.rotary_emb\.inv_freq$")

# qwen3moe.* keys: GGUFWriter method -> MarcoConfig field, as llama.cpp's converter writes them
# (conversion/base.py TextModel.set_gguf_parameters + qwen.py Qwen2MoeModel)
HPARAM_KEYS: tuple[tuple[str, str], ...] = (
    ("add_block_count", "n_layers"),
    ("add_context_length", "max_positions"),
    ("add_embedding_length", "hidden"),
    ("add_feed_forward_length", "ff"),
    ("add_head_count", "n_heads"),
    ("add_head_count_kv", "n_kv_heads"),
    ("add_rope_freq_base", "rope_theta"),
    ("add_layer_norm_rms_eps", "rms_eps"),
    ("add_expert_count", "n_experts"),
    ("add_expert_used_count", "n_experts_used"),
    ("add_key_length", "head_dim"),
    ("add_value_length", "head_dim"),
    ("add_expert_feed_forward_length", "expert_ff"),
)


@dataclass(frozen=True)
class Piece:
    """Rows [start, start+count) of source tensor `source` (viewed as rows of its last dimension)."""

    source: str
    start: int
    count: int


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor: its name, kind, layer, numpy-order shape and the source rows that fill it."""

    name: str
    kind: T
    layer: int | None
    shape: tuple[int, ...]
    pieces: tuple[Piece, ...]

    @property
    def row_len(self) -> int:
        return self.shape[-1]

    @property
    def n_rows(self) -> int:
        return math.prod(self.shape[:-1])

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def gguf_name(kind: T, layer: int | None = None) -> str:
    return gguf.TENSOR_NAMES[kind].format(bid=layer) + ".weight"


def _block_shapes(c: MarcoConfig) -> Mapping[T, tuple[int, ...]]:
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    return {
        T.ATTN_NORM: (c.hidden,),
        T.FFN_NORM: (c.hidden,),
        T.ATTN_Q: (q, c.hidden),
        T.ATTN_K: (kv, c.hidden),
        T.ATTN_V: (kv, c.hidden),
        T.ATTN_OUT: (c.hidden, q),
        T.ATTN_Q_NORM: (c.head_dim,),
        T.ATTN_K_NORM: (c.head_dim,),
        T.FFN_GATE_INP: (c.n_experts, c.hidden),
    }


def _expert_shapes(c: MarcoConfig) -> Mapping[T, tuple[int, int]]:
    return {
        T.FFN_GATE_EXP: (c.expert_ff, c.hidden),
        T.FFN_UP_EXP: (c.expert_ff, c.hidden),
        T.FFN_DOWN_EXP: (c.hidden, c.expert_ff),
    }


def hf_tensor_shapes(c: MarcoConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
    """The Hugging Face tensors of a tied checkpoint with per-expert keys, in model order: the tables above read
    the other way (synth writes these; plan_tensors maps them to GGUF)."""
    yield EMBEDDINGS, (c.vocab_size, c.hidden)
    shapes, expert_shapes = _block_shapes(c), _expert_shapes(c)
    for layer in range(c.n_layers):
        prefix = f"model.layers.{layer}"
        yield from ((f"{prefix}.{suffix}", shapes[kind]) for suffix, kind in BLOCK_TENSORS)
        for e in range(c.n_experts):
            yield from (
                (f"{prefix}.mlp.experts.{e}.{proj}.weight", expert_shapes[kind]) for proj, kind in EXPERT_TENSORS
            )
    yield FINAL_NORM, (c.hidden,)


class _Planner:
    """Collects planned tensors while checking names and shapes; records which sources it consumed."""

    def __init__(self, config: MarcoConfig, refs: Mapping[str, TensorRef]) -> None:
        self.c, self.refs = config, refs
        self.used: set[str] = set()
        self.out: list[PlannedTensor] = []

    def require(self, name: str, shape: tuple[int, ...], why: str) -> TensorRef:
        ref = self.refs.get(name)
        if ref is None:
            raise TensorError(
                f"missing tensor {name} (expected shape {list(shape)}, {why})",
                "the checkpoint is incomplete or not a Marco/Qwen3-MoE model",
            )
        if ref.shape != shape:
            raise TensorError(
                f"{ref.file.name}: tensor {name} has shape {list(ref.shape)}, but config.json implies "
                f"{list(shape)} ({why})",
                "config.json and the weights disagree: download both again",
            )
        self.used.add(name)
        return ref

    def whole(self, kind: T, layer: int | None, source: str, shape: tuple[int, ...], why: str) -> None:
        ref = self.require(source, shape, why)
        self.out.append(PlannedTensor(gguf_name(kind, layer), kind, layer, shape, (Piece(source, 0, ref.n_rows),)))

    def experts(self, layer: int) -> None:
        c, prefix = self.c, f"model.layers.{layer}.mlp.experts"
        fused = f"{prefix}.gate_up_proj" in self.refs or f"{prefix}.down_proj" in self.refs
        for proj, kind in EXPERT_TENSORS:
            rows, cols = _expert_shapes(c)[kind]
            pieces = (
                self._fused_pieces(prefix, proj, rows, cols) if fused else self._expert_pieces(prefix, proj, rows, cols)
            )
            self.out.append(
                PlannedTensor(gguf_name(kind, layer), kind, layer, (c.n_experts, rows, cols), tuple(pieces))
            )

    def _expert_pieces(self, prefix: str, proj: str, rows: int, cols: int) -> list[Piece]:
        why = f"moe_intermediate_size={self.c.expert_ff}, hidden_size={self.c.hidden}"
        names = [f"{prefix}.{e}.{proj}.weight" for e in range(self.c.n_experts)]
        return [Piece(self.require(n, (rows, cols), why).name, 0, rows) for n in names]

    def _fused_pieces(self, prefix: str, proj: str, rows: int, cols: int) -> list[Piece]:
        # transformers 5.x fused layout: gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I]
        E, why = self.c.n_experts, f"num_experts={self.c.n_experts}, moe_intermediate_size={self.c.expert_ff}"
        if proj == "down_proj":
            name = self.require(f"{prefix}.down_proj", (E, rows, cols), why).name
            return [Piece(name, e * rows, rows) for e in range(E)]
        name = self.require(f"{prefix}.gate_up_proj", (E, 2 * rows, cols), why).name
        half = 0 if proj == "gate_proj" else rows
        return [Piece(name, e * 2 * rows + half, rows) for e in range(E)]


def plan_tensors(config: MarcoConfig, refs: Mapping[str, TensorRef], *, keep_lm_head: bool) -> list[PlannedTensor]:
    """All GGUF tensors in llama.cpp's order, each mapped to its source rows; unknown tensors are an error."""
    c, p = config, _Planner(config, refs)
    p.whole(T.TOKEN_EMBD, None, EMBEDDINGS, (c.vocab_size, c.hidden), f"vocab_size={c.vocab_size}")
    for layer in range(c.n_layers):
        shapes = _block_shapes(c)
        for suffix, kind in BLOCK_TENSORS:
            p.whole(kind, layer, f"model.layers.{layer}.{suffix}", shapes[kind], f"layer {layer}")
        p.experts(layer)
    p.whole(T.OUTPUT_NORM, None, FINAL_NORM, (c.hidden,), f"hidden_size={c.hidden}")
    if LM_HEAD in refs:
        p.used.add(LM_HEAD)
        if keep_lm_head:
            p.whole(T.OUTPUT, None, LM_HEAD, (c.vocab_size, c.hidden), "untied output head")
    elif not c.tie_embeddings:
        p.require(LM_HEAD, (c.vocab_size, c.hidden), "tie_word_embeddings is false")
    leftover = sorted(n for n in set(refs) - p.used if not IGNORED.match(n))
    if leftover:
        raise TensorError(
            f"{refs[leftover[0]].file.name}: unknown tensor {leftover[0]}"
            + (f" and {len(leftover) - 1} more" if len(leftover) > 1 else "")
            + f" (config.json: num_hidden_layers={c.n_layers}, num_experts={c.n_experts})",
            "the checkpoint does not match its config.json, or is not a Marco/Qwen3-MoE model",
        )
    return p.out


def keep_experts(planned: list[PlannedTensor], keep: Sequence[Sequence[int]]) -> list[PlannedTensor]:
    """The plan with only `keep[layer]`'s experts, renumbered 0..N-1 in the order given: each expert stack
    keeps those experts' pieces (one per expert, in expert order), each router those rows."""
    out = []
    for t in planned:
        if t.layer is None:  # embeddings, final norm, output
            out.append(t)
            continue
        if t.kind in (T.FFN_GATE_EXP, T.FFN_UP_EXP, T.FFN_DOWN_EXP):
            pieces = tuple(t.pieces[e] for e in keep[t.layer])
        elif t.kind == T.FFN_GATE_INP:
            (whole,) = t.pieces
            pieces = tuple(Piece(whole.source, whole.start + e, 1) for e in keep[t.layer])
        else:
            out.append(t)
            continue
        out.append(PlannedTensor(t.name, t.kind, t.layer, (len(keep[t.layer]), *t.shape[1:]), pieces))
    return out


# --- derived figures, from a GGUF's tensor table and qwen3moe.* keys (read by inspect, bench, the RAM check) ---
GROUPS = ("embeddings", "attention", "router", "experts", "norms")
# GGUF tensor base name -> group; source: the qwen3moe tensor list in gguf-py constants.py
GROUP_OF: Mapping[str, str] = {
    "token_embd": "embeddings",
    "output": "embeddings",
    "attn_q": "attention",
    "attn_k": "attention",
    "attn_v": "attention",
    "attn_output": "attention",
    "ffn_gate_inp": "router",
    "ffn_gate_exps": "experts",
    "ffn_up_exps": "experts",
    "ffn_down_exps": "experts",
    "attn_norm": "norms",
    "ffn_norm": "norms",
    "attn_q_norm": "norms",
    "attn_k_norm": "norms",
    "output_norm": "norms",
}
KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default F16 KV cache
LOGITS_BATCH = 512  # llama.cpp's default n_batch: its logits/compute buffers scale with it


class StoredLike(Protocol):
    """Any tensor record of a GGUF (reader.StoredTensor, gguf_info.TensorInfo)."""

    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def n_bytes(self) -> int: ...


def base_name(name: str) -> str:
    """A GGUF tensor's kind as its name spells it: "blk.3.ffn_up_exps.weight" -> "ffn_up_exps"."""
    return name.removesuffix(".weight").split(".")[-1]


def group_of(name: str) -> str:
    return GROUP_OF.get(base_name(name), "other")


def expert_fraction(hparams: Mapping[str, Any]) -> float:
    used, total = hparams.get("expert_used_count"), hparams.get("expert_count")
    return used / total if used and total else 1.0


def active_parameters(tensors: Sequence[StoredLike], hparams: Mapping[str, Any]) -> int:
    """Parameters touched per token: everything shared plus the routed share of the experts."""
    f = expert_fraction(hparams)
    return round(sum(math.prod(t.shape) * (f if group_of(t.name) == "experts" else 1) for t in tensors))


def bytes_per_token(tensors: Sequence[StoredLike], hparams: Mapping[str, Any]) -> int:
    """Weight bytes one generated token reads: the routed share (expert_used_count / expert_count) of the
    ffn_*_exps tensors, all of attention, router and norms, the output matrix (token_embd when tied), and one
    row of token_embd for the embedding lookup."""
    share, total = expert_fraction(hparams), 0.0
    tied = not any(t.name == "output.weight" for t in tensors)
    for t in tensors:
        if group_of(t.name) == "experts":
            total += t.n_bytes * share
        elif t.name == "token_embd.weight":
            total += t.n_bytes / t.shape[0] + (t.n_bytes if tied else 0)
        else:
            total += t.n_bytes
    return round(total)


def kv_cache_bytes(hparams: Mapping[str, Any], n_ctx: int) -> int:
    kv_dim = hparams.get("attention.head_count_kv", 0) * hparams.get("attention.key_length", 0)
    return 2 * hparams.get("block_count", 0) * n_ctx * kv_dim * KV_BYTES_PER_ELEMENT


def ram_needed(tensors: Sequence[StoredLike], hparams: Mapping[str, Any], n_ctx: int) -> dict[str, int]:
    """RAM to run with a context of n_ctx: weights, F16 KV cache, and llama.cpp's logits and compute buffers."""
    weights = sum(t.n_bytes for t in tensors)
    vocab = next((t.shape[0] for t in tensors if t.name == "token_embd.weight"), 0)
    compute = LOGITS_BATCH * vocab * 4 * 2  # logits plus llama.cpp's compute buffer of the same order
    kv = kv_cache_bytes(hparams, n_ctx)
    return {"weights": weights, "kv_cache": kv, "compute": compute, "total": weights + kv + compute}


def add_hparams(writer: gguf.GGUFWriter, config: MarcoConfig) -> None:
    """Write the qwen3moe.* keys through gguf-py's typed setters (so value types match llama.cpp's)."""
    for method, field_name in HPARAM_KEYS:
        value = getattr(config, field_name)
        if value is not None:
            getattr(writer, method)(value)


def lm_head_is_tied(
    read_rows: Callable[[str, int, int], object], refs: Mapping[str, TensorRef], block_rows: int = 4096
) -> bool:
    """True when lm_head.weight equals the embeddings bit for bit (compared block by block)."""
    head, embd = refs[LM_HEAD], refs[EMBEDDINGS]
    if head.shape != embd.shape:
        return False
    for start in range(0, head.n_rows, block_rows):
        count = min(block_rows, head.n_rows - start)
        a, b = read_rows(LM_HEAD, start, count), read_rows(EMBEDDINGS, start, count)
        if a.tobytes() != b.tobytes():  # type: ignore[attr-defined]
            return False
    return True
