"""A PEFT LoRA adapter as a GGUF adapter for llama.cpp (llama_adapter_lora_init, llama-server --lora), written as
llama.cpp's convert_lora_to_gguf.py writes it: general.type = adapter, adapter.type = lora, adapter.lora.alpha,
general.* from the adapter's model card, one `<base tensor>.lora_a` / `.lora_b` pair per changed matrix (A [r, in]
and B [out, r] as PEFT stores them), per-expert factors stacked like the base's expert tensors, and the same
tensor types (f32/f16/bf16 everywhere; q8_0 where rows are whole Q8_0 blocks, else F16, by gguf-py's quantizer).

Where the script stops we go on: PEFT's fused-expert adapters (target_parameters) are split into gate/up/down
stacks; rsLoRA and alpha_pattern scales, which llama.cpp (scale = alpha / rank) cannot express, are folded into
lora_b, so llama.cpp applies exactly PEFT's `scale * B @ A`. A plain adapter's file is the script's byte for byte.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from marco_gguf.arch.qwen3moe import ARCH_NAME, KIND
from marco_gguf.base.errors import AdapterError
from marco_gguf.base.progress import Progress, ProgressEvent
from marco_gguf.gguf_io.metadata import KVCollector
from marco_gguf.gguf_io.reader import read_header
from marco_gguf.gguf_io.writer import GGUFStreamWriter, TensorSpec
from marco_gguf.hf.checkpoint import index_tensors, load_config
from marco_gguf.hf.lora import PREFIX, LoraAdapter, Pair

Q = gguf.GGMLQuantizationType
OUTTYPES = {  # --outtype -> (file type, tensor type): convert_lora_to_gguf.py's ftype_map
    "f32": (gguf.LlamaFileType.ALL_F32, Q.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, Q.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, Q.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q8_0),
}
EXPERT_ORDER = ("ffn_down_exps", "ffn_gate_exps", "ffn_up_exps")  # conversion/qwen.py Qwen2MoeModel's w_name order


@dataclass(frozen=True)
class LoraGGUFResult:
    """What `write_lora_gguf` wrote."""

    path: Path
    outtype: str
    size_bytes: int
    n_tensors: int  # lora_a and lora_b counted apart
    kinds: list[str]
    alpha: float
    folded_scales: bool  # rsLoRA or alpha_pattern scales multiplied into lora_b
    seconds: float

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["path"] = str(self.path)
        return d


@dataclass(frozen=True)
class Planned:
    """One base matrix (or expert stack) the adapter changes: its GGUF name and the pairs, one per expert."""

    name: str  # "blk.0.attn_q.weight"
    kind: str  # "attn_q"
    stacked: bool  # an expert stack: factors [E, r, in] and [E, out, r]
    sort_key: tuple[str, int]  # the script's order: the adapter's tensor names; a layer's stacks down, gate, up
    pairs: tuple[Pair | None, ...]  # one pair, or one per expert (None: an expert the adapter leaves alone)
    rank: int


def plan(adapter: LoraAdapter) -> list[Planned]:
    """The GGUF tensors, in the order convert_lora_to_gguf.py writes them (the adapter's names, sorted)."""
    if adapter.replaced:
        raise AdapterError(
            f"{adapter.settings.path}: modules_to_save replaces {', '.join(sorted(adapter.replaced))}; a GGUF "
            "adapter holds only LoRA factors (llama.cpp cannot replace a base tensor)",
            "merge it into the base instead: marco-gguf convert BASE --lora ADAPTER",
        )
    groups: dict[tuple[int, str], dict[int | None, Pair]] = {}
    for site, pair in adapter.pairs.items():
        groups.setdefault((site.layer, site.kind), {})[site.expert] = pair
    out = []
    for (layer, kind), by_expert in groups.items():
        name = KIND[kind].name(layer)
        if None in by_expert:
            pair = by_expert[None]
            out.append(Planned(name, kind, False, (pair.a.name, 0), (pair,), pair.rank))
            continue
        pairs = tuple(by_expert.get(e) for e in range(adapter.config.n_experts))
        ranks = {p.rank for p in pairs if p is not None}
        if len(ranks) > 1:
            raise AdapterError(
                f"{adapter.file}: the experts of {name} have ranks {sorted(ranks)}; a GGUF adapter stacks them "
                "into one tensor of one rank",
                "merge it into the base instead: marco-gguf convert BASE --lora ADAPTER",
            )
        # the script stacks a layer's experts once it has read them all, then writes down, gate, up
        key = (f"{PREFIX}model.layers.{layer}.mlp.experts", EXPERT_ORDER.index(kind))
        out.append(Planned(name, kind, True, key, pairs, ranks.pop()))
    return sorted(out, key=lambda t: t.sort_key)


def fold(adapter: LoraAdapter, pair: Pair) -> float:
    """The factor lora_b needs so llama.cpp's scale (alpha / rank, or 1 with alpha 0) becomes PEFT's."""
    alpha = adapter.settings.alpha
    return pair.scale / (alpha / pair.rank if alpha else 1.0)


def factors(adapter: LoraAdapter, t: Planned) -> tuple[np.ndarray, np.ndarray]:
    """(lora_a, lora_b) as float32: [r, in] and [out, r], or stacked [E, r, in] and [E, out, r]."""
    out, inp = KIND[t.kind].shape(adapter.config)
    a = np.zeros((len(t.pairs), t.rank, inp), np.float32)
    b = np.zeros((len(t.pairs), out, t.rank), np.float32)
    for i, pair in enumerate(t.pairs):
        if pair is not None:
            a[i], b[i] = adapter.factors(pair)
            if (f := fold(adapter, pair)) != 1.0:
                b[i] *= np.float32(f)
    return (a, b) if t.stacked else (a[0], b[0])


def out_type(qtype: Q, row_len: int) -> Q:
    """convert_lora_to_gguf.py's type: gguf-py's Q8_0 refuses rows that are not whole blocks, then it takes F16."""
    if qtype == Q.Q8_0 and row_len % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] != 0:
        return Q.F16
    return qtype


def tensor_specs(adapter: LoraAdapter, planned: list[Planned], qtype: Q) -> Iterator[TensorSpec]:
    for t in planned:
        out, inp = KIND[t.kind].shape(adapter.config)
        stack = (adapter.config.n_experts,) if t.stacked else ()
        yield TensorSpec(f"{t.name}.lora_a", (*stack, t.rank, inp), out_type(qtype, inp))
        yield TensorSpec(f"{t.name}.lora_b", (*stack, out, t.rank), out_type(qtype, t.rank))


def adapter_metadata(adapter: LoraAdapter, specs: list[TensorSpec], base_name: str) -> dict[str, gguf.GGUFValue]:
    """The script's keys in its order: architecture, type, adapter.type, general.* from the adapter's model card
    (gguf-py's Metadata.load, with its negated LoRA parameter count), adapter.lora.alpha, quantization version."""
    total = 0
    for a, b in zip(specs[::2], specs[1::2]):  # gguf_writer.get_total_parameter_count: B's shape with A's in
        total += int(np.prod(b.shape[:-1])) * a.shape[-1]
    meta = gguf.Metadata.load(None, adapter.folder, None, -total)
    if meta.name is None:
        meta.name = base_name
    kv = KVCollector(ARCH_NAME)
    kv.add_type(gguf.GGUFType.ADAPTER)
    kv.add_string(gguf.Keys.Adapter.TYPE, "lora")
    meta.set_gguf_meta_model(kv)
    kv.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(adapter.settings.alpha))
    kv.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return kv.collected


def default_path(adapter: LoraAdapter, kv: dict[str, gguf.GGUFValue], outtype: str) -> Path:
    """The script's default: `<adapter folder>/<Name>-<TYPE>-LoRA.gguf` (gguf-py's naming_convention)."""

    def get(key: str) -> str | None:
        v = kv.get(key)
        return None if v is None else str(v.value)

    name = gguf.naming_convention(
        get("general.name"),
        get("general.basename"),
        get("general.finetune"),
        get("general.version"),
        None,
        OUTTYPES[outtype][0].name.partition("_")[2],
        model_type="LoRA",
    )
    return adapter.folder / f"{name}.gguf"


def write_lora_gguf(
    adapter: str | Path,
    *,
    base: str | Path,
    outfile: str | Path | None = None,
    outtype: str = "f32",
    force: bool = False,
    progress: Progress | None = None,
) -> LoraGGUFResult:
    """Write the PEFT LoRA adapter folder `adapter`, checked against the base checkpoint folder `base` (its
    config.json and safetensors headers; no weights are read), as a GGUF adapter for llama.cpp."""
    started = time.perf_counter()
    if outtype not in OUTTYPES:
        raise AdapterError(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}", "pick one of those")
    base_folder = Path(base)
    config = load_config(base_folder)
    with LoraAdapter(Path(adapter), config, index_tensors(base_folder)) as lora:
        planned = plan(lora)
        qtype = OUTTYPES[outtype][1]
        specs = list(tensor_specs(lora, planned, qtype))
        kv = adapter_metadata(lora, specs, base_folder.resolve().name)
        path = Path(outfile) if outfile is not None else default_path(lora, kv, outtype)
        with GGUFStreamWriter(path, kv, specs, overwrite=force) as writer:
            done = len(writer.header)
            for t, spec_a, spec_b in zip(planned, specs[::2], specs[1::2]):
                a, b = factors(lora, t)
                for spec, data in ((spec_a, a), (spec_b, b)):
                    writer.write(gguf.quants.quantize(data, spec.type))
                    done += spec.n_bytes
                    if progress is not None:
                        progress(ProgressEvent(done, writer.total_bytes, "bytes", spec.name))
            writer.commit()
        kinds, folded = lora.kinds, any(fold(lora, p) != 1.0 for p in lora.pairs.values())
    return LoraGGUFResult(
        path,
        outtype,
        path.stat().st_size,
        len(specs),
        kinds,
        lora.settings.alpha,
        folded,
        time.perf_counter() - started,
    )


def check_adapter(adapter: str | Path, model: str | Path) -> float:
    """Before llama.cpp loads it (its refusals are a log line and a NULL): `adapter` is a GGUF LoRA adapter for
    the architecture, tensors and shapes of the GGUF `model`. Returns its adapter.lora.alpha."""
    path, head, base = Path(adapter), read_header(adapter), read_header(model)
    kinds = (head.fields.get(gguf.Keys.General.TYPE), head.fields.get(gguf.Keys.Adapter.TYPE))
    if kinds != ("adapter", "lora"):
        raise AdapterError(
            f"{path}: general.type / adapter.type are {kinds[0]!r} / {kinds[1]!r}, expected 'adapter' / 'lora'",
            "make a GGUF adapter with: marco-gguf lora ADAPTER --base BASE",
        )
    arch = head.fields.get(gguf.Keys.General.ARCHITECTURE)
    if arch != base.fields.get(gguf.Keys.General.ARCHITECTURE):
        raise AdapterError(f"{path}: an adapter for {arch!r}, but {Path(model).name} is a {ARCH_NAME} model", OTHER)
    shapes = {t.name: t.shape for t in base.tensors}
    factors = {t.name: t.shape for t in head.tensors}
    for name, a in factors.items():
        if not name.endswith(".lora_a"):
            continue
        target, b = name.removesuffix(".lora_a"), factors.get(name.removesuffix("a") + "b")
        if target not in shapes:
            raise AdapterError(f"{path}: tensor {name} changes {target}, which {Path(model).name} does not have", OTHER)
        want = shapes[target]
        # numpy order: lora_a [..., r, in] and lora_b [..., out, r] against the base's [..., out, in]
        if b is None or a[:-2] != want[:-2] or a[-1] != want[-1] or b[:-2] != want[:-2] or b[-2] != want[-2]:
            found = f"lora_a {list(a)}, lora_b {list(b) if b is not None else 'missing'}"
            raise AdapterError(f"{path}: {target} is {list(want)} in {Path(model).name}, but {found}", OTHER)
        if a[-2] != b[-1]:
            raise AdapterError(f"{path}: {name} has rank {a[-2]}, its lora_b rank {b[-1]}", OTHER)
    return float(head.fields.get(gguf.Keys.Adapter.LORA_ALPHA, 0.0))


OTHER = "the adapter was made for another base model: use one made for this one"
