"""The qwen3moe architecture as data: one table of tensor kinds that everything else derives from.

`KINDS` has one row per kind of tensor (Hugging Face name, gguf-py MODEL_TENSOR, shape from the config, group,
whether it is an expert stack, how pruning slices it), as gguf-py's MODEL_TENSORS and mlx-lm's qwen3_moe.py
keep one. The conversion plan, the checkpoint shapes, llama.cpp's expected tensors, inspect's groups, prune's
slicing and the imatrix name checks all read it.

Experts are never stacked in memory: a stacked GGUF tensor is planned as an ordered list of row ranges of
source tensors ("pieces"), which the writer streams one piece at a time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gguf
from gguf import MODEL_TENSOR as T

from marco_gguf.arch.config import Dims, MarcoConfig
from marco_gguf.arch.qwen3_texts import CHATML_TEMPLATE, QWEN3_PRETOKENIZER_REGEX
from marco_gguf.base.errors import TensorError

ARCH = gguf.MODEL_ARCH.QWEN3MOE
ARCH_NAME = gguf.MODEL_ARCH_NAMES[ARCH]  # "qwen3moe"
ARCH_KEY = gguf.Keys.General.ARCHITECTURE  # "general.architecture"
CHAT_TEMPLATE_KEY = gguf.Keys.Tokenizer.CHAT_TEMPLATE  # "tokenizer.chat_template"

# --- Marco and Qwen3 facts, read by the runtime, the exports and the checks (source: ../shared/MARCO.md and
# the models' config and tokenizer files).
DEFAULT_CTX = 8192  # the context Marco was fine-tuned with (max_position_embeddings is 32768)
END_OF_TURN = ("<|im_end|>", "<|endoftext|>")  # config says eos 151643, the chat format ends turns with 151645
TOKENIZER_MODEL = "gpt2"  # byte-level BPE
TOKENIZER_PRE = "qwen2"  # llama.cpp's name for the Qwen2/Qwen3 pre-tokenizer regex below
MARCO_VOCAB_SIZE = 151936  # Qwen3's vocabulary, padded: a model with it is held to Marco's tokenizer checks
# llama.cpp pre-tokenizers accepted for OTHER vocabularies only (qwen3moe models upcycled from other dense models,
# e.g. benchmarks/proxy.py's SmolLM2): a model with Marco's vocabulary must use TOKENIZER_PRE
OTHER_PRETOKENIZERS = ("smollm",)


def pretokenizer_allowed(pre: str, n_tokens: int) -> bool:
    """Marco's vocabulary takes only Qwen2's pre-tokenizer; another vocabulary may take one of OTHER_PRETOKENIZERS."""
    return pre == TOKENIZER_PRE or (n_tokens != MARCO_VOCAB_SIZE and pre in OTHER_PRETOKENIZERS)


PRETOKENIZER_REGEX = QWEN3_PRETOKENIZER_REGEX
CHATML = CHATML_TEMPLATE  # Qwen3's non-thinking ChatML with tool calls: the format Marco-Instruct uses
GROUPS = ("embeddings", "attention", "router", "experts", "norms")


@dataclass(frozen=True)
class Kind:
    """One kind of qwen3moe tensor. `hf` is the Hugging Face name: whole for the model's own tensors, a suffix
    under `model.layers.{L}.` for a layer's, and the projection under `mlp.experts.{e}.` for an expert stack."""

    tensor: T
    hf: str
    group: str
    shape: Callable[[Dims], tuple[int, ...]]  # numpy order; one expert's matrix for a stack
    scope: str = "layer"  # "model" | "layer" | "expert" (stacked along a leading axis of n_experts)
    prune: str = "copy"  # "copy" | "experts" (keep whole experts of a stack) | "rows" (keep router rows)
    optional: bool = False  # absent from a tied model

    @property
    def gguf(self) -> str:
        """The kind as GGUF names spell it: "attn_q", "ffn_up_exps", "token_embd"."""
        return gguf.TENSOR_NAMES[self.tensor].split(".")[-1]

    def name(self, layer: int | None = None) -> str:
        return gguf.TENSOR_NAMES[self.tensor].format(bid=layer) + ".weight"

    def gguf_shape(self, c: Dims) -> tuple[int, ...]:
        """Numpy-order shape of the GGUF tensor (ne reversed): an expert stack gains its expert axis first."""
        return (c.n_experts, *self.shape(c)) if self.scope == "expert" else self.shape(c)


# Source: gguf-py constants.py MODEL_TENSORS[QWEN3MOE] and tensor_mapping.py's qwen3moe rows; shapes from
# transformers' Qwen3MoeForCausalLM. Order: llama.cpp's (embeddings, each layer, final norm, output).
HEAD: tuple[Kind, ...] = (
    Kind(T.TOKEN_EMBD, "model.embed_tokens.weight", "embeddings", lambda c: (c.vocab_size, c.hidden), "model"),
)
BLOCK: tuple[Kind, ...] = (
    Kind(T.ATTN_NORM, "input_layernorm.weight", "norms", lambda c: (c.hidden,)),
    Kind(T.ATTN_Q, "self_attn.q_proj.weight", "attention", lambda c: (c.q_dim, c.hidden)),
    Kind(T.ATTN_K, "self_attn.k_proj.weight", "attention", lambda c: (c.kv_dim, c.hidden)),
    Kind(T.ATTN_V, "self_attn.v_proj.weight", "attention", lambda c: (c.kv_dim, c.hidden)),
    Kind(T.ATTN_OUT, "self_attn.o_proj.weight", "attention", lambda c: (c.hidden, c.q_dim)),
    Kind(T.ATTN_Q_NORM, "self_attn.q_norm.weight", "norms", lambda c: (c.head_dim,)),
    Kind(T.ATTN_K_NORM, "self_attn.k_norm.weight", "norms", lambda c: (c.head_dim,)),
    Kind(T.FFN_NORM, "post_attention_layernorm.weight", "norms", lambda c: (c.hidden,)),
    Kind(T.FFN_GATE_INP, "mlp.gate.weight", "router", lambda c: (c.n_experts, c.hidden), prune="rows"),
    Kind(T.FFN_GATE_EXP, "gate_proj", "experts", lambda c: (c.expert_ff, c.hidden), "expert", "experts"),
    Kind(T.FFN_UP_EXP, "up_proj", "experts", lambda c: (c.expert_ff, c.hidden), "expert", "experts"),
    Kind(T.FFN_DOWN_EXP, "down_proj", "experts", lambda c: (c.hidden, c.expert_ff), "expert", "experts"),
)
TAIL: tuple[Kind, ...] = (
    Kind(T.OUTPUT_NORM, "model.norm.weight", "norms", lambda c: (c.hidden,), "model"),
    Kind(T.OUTPUT, "lm_head.weight", "embeddings", lambda c: (c.vocab_size, c.hidden), "model", optional=True),
)
KINDS: tuple[Kind, ...] = HEAD + BLOCK + TAIL
KIND: Mapping[str, Kind] = {k.gguf: k for k in KINDS}  # "attn_q" -> its row
KIND_OF: Mapping[T, Kind] = {k.tensor: k for k in KINDS}
GROUP_OF: Mapping[str, str] = {k.gguf: k.group for k in KINDS}  # "attn_q" -> "attention"
EXPERT_KINDS = tuple(k for k in BLOCK if k.scope == "expert")
ROUTER = KIND_OF[T.FFN_GATE_INP]
EMBEDDINGS, FINAL_NORM, LM_HEAD = (KIND_OF[t].hf for t in (T.TOKEN_EMBD, T.OUTPUT_NORM, T.OUTPUT))
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


def parse_name(name: str) -> tuple[int | None, Kind] | None:
    """A GGUF tensor name's layer and kind: "blk.3.ffn_up_exps.weight" -> (3, ffn_up_exps); None for a name
    that is not a qwen3moe tensor (an imatrix entry of another model, a stray tensor)."""
    parts = name.removesuffix(".weight").split(".")
    if len(parts) == 1 and parts[0] in KIND and KIND[parts[0]].scope == "model":
        return None, KIND[parts[0]]
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in KIND:
        kind = KIND[parts[2]]
        return (int(parts[1]), kind) if kind.scope != "model" else None
    return None


_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_HF_EXPERT = re.compile(r"mlp\.experts\.(\d+)\.(\w+)\.weight")


def parse_hf_name(name: str) -> tuple[int | None, Kind, int | None] | None:
    """A Hugging Face tensor name's (layer, kind, expert), in the per-expert spelling: "model.layers.3.mlp.experts.
    7.up_proj.weight" -> (3, ffn_up_exps, 7); "lm_head.weight" -> (None, output, None); None for other names."""
    model_kind = next((k for k in KINDS if k.scope == "model" and k.hf == name), None)
    if model_kind is not None:
        return None, model_kind, None
    m = _HF_LAYER.fullmatch(name)
    if m is None:
        return None
    layer, rest = int(m.group(1)), m.group(2)
    if (e := _HF_EXPERT.fullmatch(rest)) is not None:
        kind = next((k for k in EXPERT_KINDS if k.hf == e.group(2)), None)
        return (layer, kind, int(e.group(1))) if kind is not None else None
    kind = next((k for k in BLOCK if k.scope == "layer" and k.hf == rest), None)
    return (layer, kind, None) if kind is not None else None


def gguf_tensor_shapes(c: Dims, *, with_output: bool = False) -> dict[str, tuple[int, ...]]:
    """GGUF name -> numpy-order shape of every tensor llama.cpp's qwen3moe loader creates, in its order."""
    out = {k.name(): k.gguf_shape(c) for k in HEAD}
    for layer in range(c.n_layers):
        out.update({k.name(layer): k.gguf_shape(c) for k in BLOCK})
    out.update({k.name(): k.gguf_shape(c) for k in TAIL if with_output or not k.optional})
    return out


class SourceTensor(Protocol):
    """What the planner needs of a checkpoint tensor (hf.safetensors_format.TensorRef)."""

    @property
    def name(self) -> str: ...
    @property
    def file(self) -> Path: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def n_rows(self) -> int: ...


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
    return KIND_OF[kind].name(layer)


def hf_tensor_shapes(c: MarcoConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
    """The Hugging Face tensors of a tied checkpoint with per-expert keys, in model order: the table read the
    other way (synth writes these; plan_tensors maps them to GGUF)."""
    yield from ((k.hf, k.shape(c)) for k in HEAD)
    for layer in range(c.n_layers):
        prefix = f"model.layers.{layer}"
        yield from ((f"{prefix}.{k.hf}", k.shape(c)) for k in BLOCK if k.scope == "layer")
        for e in range(c.n_experts):
            yield from ((f"{prefix}.mlp.experts.{e}.{k.hf}.weight", k.shape(c)) for k in EXPERT_KINDS)
    yield from ((k.hf, k.shape(c)) for k in TAIL if not k.optional)


class _Planner:
    """Collects planned tensors while checking names and shapes; records which sources it consumed."""

    def __init__(self, config: MarcoConfig, refs: Mapping[str, SourceTensor]) -> None:
        self.c, self.refs = config, refs
        self.used: set[str] = set()
        self.out: list[PlannedTensor] = []

    def require(self, name: str, shape: tuple[int, ...], why: str) -> SourceTensor:
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

    def whole(self, kind: Kind, layer: int | None, source: str, why: str) -> None:
        shape = kind.shape(self.c)
        ref = self.require(source, shape, why)
        self.out.append(PlannedTensor(kind.name(layer), kind.tensor, layer, shape, (Piece(source, 0, ref.n_rows),)))

    def experts(self, kind: Kind, layer: int) -> None:
        c, prefix = self.c, f"model.layers.{layer}.mlp.experts"
        fused = f"{prefix}.gate_up_proj" in self.refs or f"{prefix}.down_proj" in self.refs
        rows, cols = kind.shape(c)
        make = self._fused_pieces if fused else self._expert_pieces
        pieces = tuple(make(prefix, kind.hf, rows, cols))
        self.out.append(PlannedTensor(kind.name(layer), kind.tensor, layer, (c.n_experts, rows, cols), pieces))

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


def plan_tensors(config: MarcoConfig, refs: Mapping[str, SourceTensor], *, keep_lm_head: bool) -> list[PlannedTensor]:
    """All GGUF tensors in llama.cpp's order, each mapped to its source rows; unknown tensors are an error."""
    c, p = config, _Planner(config, refs)
    p.whole(HEAD[0], None, EMBEDDINGS, f"vocab_size={c.vocab_size}")
    for layer in range(c.n_layers):
        for kind in BLOCK:
            if kind.scope == "expert":
                p.experts(kind, layer)
            else:
                p.whole(kind, layer, f"model.layers.{layer}.{kind.hf}", f"layer {layer}")
    p.whole(TAIL[0], None, FINAL_NORM, f"hidden_size={c.hidden}")
    if LM_HEAD in refs:
        p.used.add(LM_HEAD)
        if keep_lm_head:
            p.whole(TAIL[1], None, LM_HEAD, "untied output head")
    elif not c.tie_embeddings:
        p.require(LM_HEAD, TAIL[1].shape(c), "tie_word_embeddings is false")
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
        how = KIND_OF[t.kind].prune
        if t.layer is None or how == "copy":
            out.append(t)
            continue
        if how == "experts":
            pieces = tuple(t.pieces[e] for e in keep[t.layer])
        else:  # "rows": the router has one row per expert
            (whole,) = t.pieces
            pieces = tuple(Piece(whole.source, whole.start + e, 1) for e in keep[t.layer])
        out.append(PlannedTensor(t.name, t.kind, t.layer, (len(keep[t.layer]), *t.shape[1:]), pieces))
    return out


# --- derived figures, from a GGUF's tensor table and qwen3moe.* keys (read by inspect, bench, the RAM check) ---
KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default F16 KV cache
KV_CELLS_PAD = 256  # llama.cpp rounds n_ctx up to a multiple of 256 cells (src/llama-context.cpp, GGML_PAD)
DEFAULT_BATCH = 512  # llama.cpp's default n_batch: the most tokens one llama_decode carries; logits and
# compute buffers scale with it


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
    """K and V of every layer for n_ctx cells, as llama.cpp allocates them (n_ctx rounded up to 256 cells)."""
    kv_dim = hparams.get("attention.head_count_kv", 0) * hparams.get("attention.key_length", 0)
    cells = -(-n_ctx // KV_CELLS_PAD) * KV_CELLS_PAD
    return 2 * hparams.get("block_count", 0) * cells * kv_dim * KV_BYTES_PER_ELEMENT


def compute_bytes(hparams: Mapping[str, Any], n_vocab: int, n_ctx: int) -> int:
    """llama.cpp's compute and output buffers for chat's and serve's context (n_batch = n_ubatch = min(512,
    n_ctx), flash attention on, as "auto" gives a CPU). The graph allocator reuses memory, so the compute buffer
    is its larger stage: the output (one micro-batch's F32 logits and two n_embd-wide rows), or a layer (the F16
    KQ mask, n_kv x n_ubatch, next to the routed experts' gate, up, SwiGLU and down activations). Marco's 151,936
    token vocabulary makes the output stage the larger one at any context (flat in n_ctx); small test models
    grow with the mask. The output buffer holds one row of logits. Compared with llama.cpp's log ("CPU compute
    buffer size") by tests/test_inspect_verify.py: to its printed 0.01 MiB on Marco's vocabulary, within 5 % on
    test shapes (a few n_embd-wide rows of the layer stage are not counted)."""
    n_ubatch, n_embd = min(n_ctx, DEFAULT_BATCH), hparams.get("embedding_length", 0)
    output = n_ubatch * (n_vocab + 2 * n_embd) * 4
    mask = -(-n_ctx // KV_CELLS_PAD) * KV_CELLS_PAD * n_ubatch * 2
    ff, used = hparams.get("expert_feed_forward_length", 0), hparams.get("expert_used_count", 0)
    layer = mask + n_ubatch * used * (3 * ff + n_embd) * 4
    return max(output, layer) + n_vocab * 4


def ram_needed(tensors: Sequence[StoredLike], hparams: Mapping[str, Any], n_ctx: int) -> dict[str, int]:
    """RAM to run with a context of n_ctx: weights, F16 KV cache, and llama.cpp's compute and output buffers."""
    weights = sum(t.n_bytes for t in tensors)
    vocab = next((t.shape[0] for t in tensors if t.name == "token_embd.weight"), 0)
    compute = compute_bytes(hparams, vocab, n_ctx)
    kv = kv_cache_bytes(hparams, n_ctx)
    return {"weights": weights, "kv_cache": kv, "compute": compute, "total": weights + kv + compute}


def add_hparams(writer: gguf.GGUFWriter, config: MarcoConfig) -> None:
    """Write the qwen3moe.* keys through gguf-py's typed setters (so value types match llama.cpp's)."""
    for method, field_name in HPARAM_KEYS:
        value = getattr(config, field_name)
        if value is not None:
            getattr(writer, method)(value)


def lm_head_is_tied(
    read_rows: Callable[[str, int, int], object], refs: Mapping[str, SourceTensor], block_rows: int = 4096
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
