"""`upcycle`: a dense Qwen3 checkpoint -> a Qwen3-MoE one in Hugging Face layout, the first step of the recipe
Marco-Mini and Marco-Nano were made with (the Marco-MoE paper; ../shared/MARCO.md). What `convert` reads.

Per layer, from the dense FFN (gate_proj, up_proj [ff, hidden], down_proj [hidden, ff]):

- Split: the intermediate dimension is cut into `split` slices of ff/split (gate and up rows, down columns);
  expert e holds slice e % split, so experts 0..split-1 make one whole dense FFN and every slice is copied
  experts/split times.
- Scale: each expert's gate, up and down are multiplied by split^(1/3) (Marco's N^(1/3), N the split). Up and
  down are linear and SiLU(c*g) ~ c*SiLU(g) where it matters, so an expert's output grows ~split-fold: what
  the renormalised top-k weights (summing to 1) take away when each slice is among the top-k k/split times.
  With split 1 the scale is 1 and experts are bit-exact copies.
- Router: normal(0, initializer_range) (0.02 when config.json has none), the init transformers gives a new
  Qwen3-MoE router, seeded per layer. transformers and llama.cpp renormalise the top-k weights to sum 1, so
  whole copies (split 1, drop 0) give exactly the dense FFN's output whichever experts the router picks.
- Drop (Drop-Upcycling, Nakamura et al. 2025, arXiv 2502.19261): per expert, floor(drop * ff/split)
  intermediate indices drawn without replacement; at those the gate and up rows and the down column are
  redrawn from normal(mean, std) of the dense layer's whole matrix (the paper's per-matrix statistics of the
  original weights), then scaled like the rest. Seeded per (layer, expert): the result does not depend on
  the order of work.

Streaming: one layer's dense FFN and one expert in memory at a time; other tensors are copied in row blocks,
in their own dtype (experts and router take the dense FFN's). The output folder appears whole or not at all.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from marco_gguf.arch.config import Dims
from marco_gguf.arch.qwen3moe import BLOCK, EXPERT_KINDS, HEAD, IGNORED, ROUTER, TAIL, Kind
from marco_gguf.base.errors import TensorError, UnsupportedModelError, UpcycleError
from marco_gguf.base.files import check_space, folder_atomic
from marco_gguf.base.jsonfields import Fields, load_json_object
from marco_gguf.base.progress import Progress, ProgressEvent
from marco_gguf.hf.checkpoint import INDEX_NAME, SUPPORTED_ARCHITECTURE, TensorFiles
from marco_gguf.hf.safetensors_format import WEIGHT_DTYPES, encode_header, to_bf16

DENSE_ARCHITECTURE = "Qwen3ForCausalLM"
MAX_SHARD_BYTES = 5 * 10**9  # Hugging Face's default max_shard_size ("5GB")
BLOCK_BYTES = 8 << 20  # float32 bytes per copied row block
DEFAULT_ROUTER_STD = 0.02  # transformers' initializer_range default
ROUTER_AUX_LOSS = 0.001  # Qwen3-MoE's and Marco's router_aux_loss_coef
NOT_COPIED = ("config.json", INDEX_NAME, "README.md")  # the dense card describes another model


@dataclass(frozen=True)
class UpcycleResult:
    """What `upcycle` wrote."""

    path: Path
    experts: int
    top_k: int
    split: int
    drop: float
    seed: int
    expert_ff: int
    dropped_rows: int  # per expert
    scale: float
    n_parameters: int
    n_shards: int
    size_bytes: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "path": str(self.path)}


@dataclass(frozen=True)
class Out:
    """One output tensor: its name, safetensors dtype, shape and where it comes from."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: str  # the dense tensor copied, or the dense FFN layer's prefix
    expert: int | None = None  # None: copied (or the router, kind ROUTER)
    kind: Kind | None = None

    @property
    def n_bytes(self) -> int:
        return math.prod(self.shape) * WEIGHT_DTYPES[self.dtype][1]


@dataclass(frozen=True)
class Dense:
    """A dense Qwen3's config.json: the raw object, its sizes as a model of one whole-FFN expert."""

    raw: dict[str, Any]
    dims: Dims
    router_std: float  # initializer_range: how transformers initialises a new router

    @property
    def ff(self) -> int:
        return self.dims.expert_ff


def read_dense_config(folder: Path) -> Dense:
    """config.json of a dense Qwen3 (Qwen3ForCausalLM), checked."""
    path = folder / "config.json"
    hint = "SOURCE must be a dense Qwen3 checkpoint (Qwen3ForCausalLM), e.g. Qwen3-0.6B-Base"
    raw = load_json_object(path, UnsupportedModelError, hint)
    f = Fields(raw, path, UnsupportedModelError, hint)
    archs = f.list("architectures", str, default=[])
    if archs != [DENSE_ARCHITECTURE]:
        already = " (already a mixture of experts)" if archs == [SUPPORTED_ARCHITECTURE] else ""
        raise UnsupportedModelError(
            f"{path}: architecture {archs or raw.get('model_type')!r} is not {DENSE_ARCHITECTURE}{already}", hint
        )
    heads, hidden = f.int("num_attention_heads", lo=1), f.int("hidden_size", lo=1)
    dims = Dims(
        n_layers=f.int("num_hidden_layers", lo=1),
        hidden=hidden,
        n_heads=heads,
        n_kv_heads=f.int("num_key_value_heads", lo=1, default=heads),
        head_dim=f.int("head_dim", lo=1, default=hidden // heads),
        n_experts=1,
        expert_ff=f.int("intermediate_size", lo=1),
        vocab_size=f.int("vocab_size", lo=1),
    )
    return Dense(raw, dims, f.number("initializer_range", default=DEFAULT_ROUTER_STD, hi=1.0))


def check_options(ff: int, *, experts: int, top_k: int, split: int, drop: float, seed: int) -> None:
    """Refuse, before anything is read or written, what cannot make a Qwen3-MoE of this dense FFN."""
    rules = (
        (experts >= 1, f"--experts {experts}: need at least 1 expert", "e.g. --experts 256 as Marco-Mini"),
        (split >= 1, f"--split {split}: need at least 1 slice", "--split 1 copies the whole FFN"),
        (
            split < 1 or ff % split == 0,
            f"--split {split} does not divide the dense FFN's intermediate_size {ff}",
            f"use a divisor of {ff}, e.g. {', '.join(str(d) for d in (1, 2, 4, 8) if ff % d == 0)}",
        ),
        (
            split < 1 or experts % split == 0,
            f"--experts {experts} is not a multiple of --split {split} (each slice needs the same number of copies)",
            f"use a multiple of {split}",
        ),
        (1 <= top_k <= max(experts, 1), f"--top-k {top_k} must be from 1 to --experts ({experts})", "e.g. 8"),
        (0.0 <= drop <= 1.0, f"--drop {drop} is not a fraction from 0 to 1", "Drop-Upcycling's paper uses 0.5"),
        (seed >= 0, f"--seed {seed} is negative", "use a seed from 0 up"),
    )
    for ok, message, hint in rules:
        if not ok:
            raise UpcycleError(message, hint)


def plan(dims: Dims, files: TensorFiles, *, experts: int, expert_ff: int) -> list[Out]:
    """Every output tensor in model order: the dense tensors copied, each layer's router and experts made.
    The dense names and shapes are the qwen3moe table's with one whole-FFN expert; anything else is refused."""
    refs, used, out = files.tensors, set(), []

    def take(name: str, shape: tuple[int, ...]) -> str:
        ref = refs.get(name)
        if ref is None:
            raise TensorError(f"{files.folder}: missing tensor {name} (expected shape {list(shape)})", "download again")
        if ref.shape != shape:
            raise TensorError(
                f"{ref.file.name}: tensor {name} has shape {list(ref.shape)}, config.json implies {list(shape)}",
                "config.json and the weights disagree: download both again",
            )
        used.add(name)
        return ref.dtype

    def copy(name: str, kind: Kind) -> None:
        out.append(Out(name, take(name, kind.shape(dims)), kind.shape(dims), name))

    moe = replace(dims, n_experts=experts, expert_ff=expert_ff)
    copy(HEAD[0].hf, HEAD[0])
    for layer in range(dims.n_layers):
        pre = f"model.layers.{layer}"
        for kind in BLOCK:
            if kind.scope == "layer" and kind is not ROUTER:
                copy(f"{pre}.{kind.hf}", kind)
        dtypes = [take(f"{pre}.mlp.{k.hf}.weight", k.shape(dims)) for k in EXPERT_KINDS]
        dtype = dtypes[0]  # gate_proj's: experts and router are stored as the dense FFN was
        out.append(Out(f"{pre}.{ROUTER.hf}", dtype, ROUTER.shape(moe), f"{pre}.mlp", kind=ROUTER))
        for e in range(experts):
            out += [
                Out(f"{pre}.mlp.experts.{e}.{k.hf}.weight", dtype, k.shape(moe), f"{pre}.mlp", e, k)
                for k in EXPERT_KINDS
            ]
    copy(TAIL[0].hf, TAIL[0])
    if TAIL[1].hf in refs:  # an untied head, or a tied copy: kept as the dense model had it
        copy(TAIL[1].hf, TAIL[1])
    leftover = sorted(n for n in set(refs) - used if not IGNORED.match(n))
    if leftover:
        raise TensorError(
            f"{refs[leftover[0]].file.name}: unknown tensor {leftover[0]}"
            + (f" and {len(leftover) - 1} more" if len(leftover) > 1 else ""),
            "upcycle reads plain Qwen3 checkpoints (no biases, adapters or extra heads)",
        )
    return out


def encode(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> the stored dtype (exact for values that came from it)."""
    if dtype == "BF16":
        return to_bf16(np.ascontiguousarray(x, np.float32))
    return np.ascontiguousarray(x, WEIGHT_DTYPES[dtype][0])


class LayerMaker:
    """Makes one layer's router and experts from its dense FFN (read once, when the layer's first is asked)."""

    def __init__(self, files: TensorFiles, *, split: int, drop: float, seed: int, router_std: float) -> None:
        self.files, self.split, self.seed, self.router_std = files, split, seed, router_std
        self.drop, self.prefix = drop, ""
        self.dense: dict[str, np.ndarray] = {}
        self.stats: dict[str, tuple[float, float]] = {}
        self.last: tuple[tuple[str, int], dict[str, np.ndarray]] | None = None  # gate/up/down are asked in turn

    def _load(self, prefix: str) -> None:
        if prefix != self.prefix:
            self.dense = {k.hf: self.files.read_rows(f"{prefix}.{k.hf}.weight") for k in EXPERT_KINDS}
            self.stats = {
                n: (float(w.mean(dtype=np.float64)), float(w.std(dtype=np.float64))) for n, w in self.dense.items()
            }
            self.prefix = prefix

    def router(self, t: Out, layer: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, layer])
        return (rng.standard_normal(t.shape) * self.router_std).astype(np.float32)

    def expert(self, prefix: str, layer: int, e: int) -> dict[str, np.ndarray]:
        """gate/up/down of expert e: its slice of the dense FFN, partly redrawn, scaled."""
        if self.last is not None and self.last[0] == (prefix, e):
            return self.last[1]
        self._load(prefix)
        width = self.dense["gate_proj"].shape[0] // self.split
        lo = (e % self.split) * width
        w = {
            "gate_proj": self.dense["gate_proj"][lo : lo + width].copy(),
            "up_proj": self.dense["up_proj"][lo : lo + width].copy(),
            "down_proj": self.dense["down_proj"][:, lo : lo + width].copy(),
        }
        rng = np.random.default_rng([self.seed, 0, layer, e])
        rows = rng.choice(width, dropped_rows(width, self.drop), replace=False)
        for name, m in w.items():
            mean, std = self.stats[name]
            view = m.T if name == "down_proj" else m  # down holds the intermediate index in its columns
            view[rows] = rng.normal(mean, std, (len(rows), view.shape[1]))
            m *= np.float32(expert_scale(self.split))
        self.last = ((prefix, e), w)
        return w


def dropped_rows(width: int, drop: float) -> int:
    """How many of an expert's `width` intermediate rows Drop-Upcycling redraws: floor(drop * width)."""
    return math.floor(drop * width + 1e-9)  # 0.3 * 10 is 2.9999999999999996 in floating point


def expert_scale(split: int) -> float:
    return split ** (1 / 3)


def _tensor_data(t: Out, files: TensorFiles, maker: LayerMaker) -> Iterator[np.ndarray]:
    if t.kind is None:
        ref = files.tensors[t.source]
        step = max(1, BLOCK_BYTES // (4 * ref.row_len))
        for start in range(0, ref.n_rows, step):
            yield encode(files.read_rows(t.source, start, min(step, ref.n_rows - start)), t.dtype)
        return
    layer = int(t.source.split(".")[2])
    if t.expert is None:
        yield encode(maker.router(t, layer), t.dtype)
    else:
        yield encode(maker.expert(t.source, layer, t.expert)[t.kind.hf], t.dtype)


def _shards(tensors: list[Out], limit: int) -> list[list[Out]]:
    shards: list[list[Out]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.n_bytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.n_bytes
    return shards


def _write(build: Path, tensors: list[Out], files: TensorFiles, maker: LayerMaker, limit: int, progress) -> int:
    """The safetensors shards (and index when several) into `build`; returns the shard count."""
    shards, total, done = _shards(tensors, limit), sum(t.n_bytes for t in tensors), 0
    names = (
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        if len(shards) > 1
        else ["model.safetensors"]
    )
    for fname, shard in zip(names, shards):
        with open(build / fname, "wb") as f:
            f.write(encode_header([(t.name, t.dtype, t.shape) for t in shard]))
            for t in shard:
                for data in _tensor_data(t, files, maker):
                    f.write(data.data.cast("B"))
                    done += data.nbytes
                if progress is not None:
                    progress(ProgressEvent(done, total, "bytes", t.name))
    if len(shards) > 1:
        weight_map = {t.name: fname for fname, shard in zip(names, shards) for t in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (build / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return len(shards)


def moe_config(raw: dict[str, Any], record: dict[str, Any], *, experts: int, top_k: int, expert_ff: int) -> dict:
    """The dense config.json as a Qwen3-MoE one: every layer MoE, top-k renormalised (what llama.cpp's qwen3moe
    computes), keys in Marco's published (transformers 4.57) spelling, which transformers 5 reads too."""
    config = {k: v for k, v in raw.items() if k not in ("num_local_experts", "architectures", "model_type")}
    return {
        "architectures": [SUPPORTED_ARCHITECTURE],
        "model_type": "qwen3_moe",
        **config,
        "num_experts": experts,
        "num_experts_per_tok": top_k,
        "moe_intermediate_size": expert_ff,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "output_router_logits": False,
        "router_aux_loss_coef": ROUTER_AUX_LOSS,
        "marco_upcycle": record,
    }


def upcycle(
    source: str | Path,
    *,
    experts: int,
    top_k: int,
    split: int = 1,
    drop: float = 0.0,
    seed: int = 0,
    outdir: str | Path,
    force: bool = False,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    progress: Progress | None = None,
) -> UpcycleResult:
    """Upcycle the dense Qwen3 checkpoint folder `source` into a Qwen3-MoE checkpoint folder `outdir` with
    `experts` experts (`top_k` per token), each a 1/`split` slice of the dense FFN, `drop` of each expert's
    rows redrawn (seeded by `seed`); the module docstring gives the method. Tokenizer files are copied."""
    started, src = time.perf_counter(), Path(source)
    if not src.is_dir():
        raise UpcycleError(f"{src}: not a folder", "SOURCE must be a dense Qwen3 checkpoint folder")
    dense = read_dense_config(src)
    check_options(dense.ff, experts=experts, top_k=top_k, split=split, drop=drop, seed=seed)
    expert_ff, out = dense.ff // split, Path(outdir)
    with TensorFiles(src) as files:
        tensors = plan(dense.dims, files, experts=experts, expert_ff=expert_ff)
        size = sum(t.n_bytes for t in tensors)
        check_space(out.parent, size, target=out, hint="free space or choose another -o", error=UpcycleError)
        record = {"source": src.resolve().name, "split": split, "drop": float(drop), "seed": seed}
        maker = LayerMaker(files, split=split, drop=drop, seed=seed, router_std=dense.router_std)
        with folder_atomic(out, overwrite=force, hint="pass --force to replace it, or choose another -o") as build:
            n_shards = _write(build, tensors, files, maker, max_shard_bytes, progress)
            config = moe_config(dense.raw, record, experts=experts, top_k=top_k, expert_ff=expert_ff)
            (build / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            for f in sorted(src.iterdir()):
                if f.is_file() and f.name not in NOT_COPIED and f.suffix != ".safetensors":
                    shutil.copyfile(f, build / f.name)
    return UpcycleResult(
        out,
        experts,
        top_k,
        split,
        drop,
        seed,
        expert_ff,
        dropped_rows(expert_ff, drop),
        expert_scale(split),
        sum(math.prod(t.shape) for t in tensors),
        n_shards,
        size,
        time.perf_counter() - started,
    )
