"""A PEFT LoRA adapter for a Marco base: every factor pair mapped to the base matrix it changes, checked
against the base's shapes, and read lazily (row blocks, as checkpoints are read) so memory stays bounded.

PEFT stores the pairs in three layouts, all of which map to "sites" (layer, GGUF kind, expert):
- a module per matrix (`target_modules`): `model.layers.L.self_attn.q_proj.lora_A.weight` [r, in] and
  `lora_B.weight` [out, r]; so are the router (`mlp.gate`) and transformers-4.x per-expert modules
  (`mlp.experts.E.gate_proj`); delta = scale * B @ A.
- a parameter of fused experts (`target_parameters`, transformers 5.x): `mlp.experts[.base_layer].lora_A.weight`
  [E*r, in] (expert-major rows) and `lora_B.weight` [out, r*E] (rank-major columns), where `out` is 2I for
  `gate_up_proj` (gate rows first) and H for `down_proj` (ParamWrapper.get_delta_weight). Two targeted parameters
  of one module nest (`base_layer`); which is which follows from the shapes, which always differ.
- `modules_to_save`: a whole replacement tensor, `<module>.weight`.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import gguf
import numpy as np

from marco_gguf.arch.config import MarcoConfig
from marco_gguf.arch.qwen3moe import LM_HEAD, parse_hf_name
from marco_gguf.base.errors import AdapterError, CheckpointError
from marco_gguf.hf.checkpoint import TensorReader
from marco_gguf.hf.lora_config import load_settings
from marco_gguf.hf.lora_targets import check_targets
from marco_gguf.hf.safetensors_format import TensorRef, read_safetensors_header

WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
FACTOR = re.compile(r"(?P<module>.+)\.lora_(?P<ab>[AB])\.weight")
FUSED = re.compile(r"model\.layers\.(?P<layer>\d+)\.mlp\.experts(?P<nest>(\.base_layer)*)")
LORA_KINDS = (
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate_inp",
    "ffn_gate_exps",
    "ffn_up_exps",
    "ffn_down_exps",
)
B_CACHE = 4  # fused lora_B tensors kept reorganised per expert: the tensors being converted at one time


@dataclass(frozen=True)
class Site:
    """One base matrix a LoRA pair changes: a layer's matrix of a GGUF kind, or one expert's of a stack."""

    layer: int
    kind: str  # "attn_q", "ffn_gate_inp", "ffn_up_exps", ...
    expert: int | None = None


@dataclass(frozen=True)
class Pair:
    """The factors of one site: scale * B[rows] @ A, with A [rank, in] and B [out, rank] as read by `factors`."""

    key: str  # PEFT's module or parameter name, which its rank_pattern/alpha_pattern match
    a: TensorRef
    b: TensorRef
    rank: int
    alpha: float
    scale: float
    n_experts: int = 1  # > 1: PEFT's fused layout; this pair is expert `expert` of it
    expert: int = 0
    b_first: int = 0  # first row of B for this kind (the up half of gate_up_proj starts at I)


class LoraAdapter:
    """An open adapter, checked against a base: its settings, the pairs by site, the replaced tensors."""

    def __init__(self, folder: Path, config: MarcoConfig, base: Mapping[str, TensorRef]) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise AdapterError(f"{self.folder}: not a folder", "ADAPTER must be a PEFT adapter folder")
        self.settings = load_settings(self.folder)
        self.file = self.folder / WEIGHTS_NAME
        if not self.file.is_file():
            bin_file = (self.folder / "adapter_model.bin").is_file()
            raise AdapterError(
                f"{self.file}: not found" + (" (the folder has adapter_model.bin, a pickle)" if bin_file else ""),
                "save the adapter with safe_serialization=True (PEFT's default)",
            )
        try:
            refs = read_safetensors_header(self.file)
        except CheckpointError as e:
            raise AdapterError(e.message, e.hint) from None
        self.config = config
        self.pairs: dict[Site, Pair] = {}
        self.replaced: dict[str, TensorRef] = {}  # base tensor name -> modules_to_save tensor
        self._read(refs, base)
        check_targets(self.settings, config, {p.key for p in self.pairs.values()})
        self._reader = TensorReader(refs)
        self._b_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __enter__(self) -> LoraAdapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    @property
    def kinds(self) -> list[str]:
        """The GGUF kinds the adapter changes, in LORA_KINDS order."""
        present = {s.kind for s in self.pairs}
        return [k for k in LORA_KINDS if k in present]

    # --- reading the tensor table ---
    def _fail(
        self, name: str, what: str, hint: str = "the adapter was made for another model or is damaged"
    ) -> NoReturn:
        raise AdapterError(f"{self.file}: tensor {name} {what}", hint)

    def _read(self, refs: Mapping[str, TensorRef], base: Mapping[str, TensorRef]) -> None:
        factors: dict[str, dict[str, TensorRef]] = {}
        for name, ref in refs.items():
            if not name.startswith(PREFIX):
                self._fail(name, f"does not start with {PREFIX!r}, as PEFT's LoRA keys do", "save it with PEFT")
            key = name[len(PREFIX) :]
            if (m := FACTOR.fullmatch(key)) is not None:
                factors.setdefault(m.group("module"), {})[m.group("ab")] = ref
            elif "lora_embedding_" in key:
                self._fail(name, "is a LoRA on the embeddings, which a tied model shares with its output", TIED_HINT)
            elif "lora_magnitude_vector" in key:
                self._fail(name, "is a DoRA magnitude vector", "only plain LoRA adapters are supported")
            else:
                self._replacement(name, key, ref, base)
        for module, ab in factors.items():
            for part in "AB":
                if part not in ab:
                    other = "B" if part == "A" else "A"
                    self._fail(f"{PREFIX}{module}.lora_{other}.weight", f"has no lora_{part} partner", REDO)
            self._pair(module, ab["A"], ab["B"])

    def _replacement(self, name: str, key: str, ref: TensorRef, base: Mapping[str, TensorRef]) -> None:
        module = key.removesuffix(".weight")
        listed = any(module == m or module.endswith(f".{m}") for m in self.settings.modules_to_save)
        parsed = parse_hf_name(key)
        if not listed or parsed is None:
            self._fail(
                name, "is neither a LoRA factor (lora_A/lora_B) nor a tensor of modules_to_save of a Marco model"
            )
        layer, kind, expert = parsed
        self._check_layer(name, layer, expert)
        if key not in base and key != LM_HEAD:
            self._fail(name, "replaces a tensor the base checkpoint does not have")
        shape = kind.shape(self.config)
        if ref.shape != shape:
            self._fail(name, f"has shape {list(ref.shape)}, but the base's {key} is {list(shape)}")
        self.replaced[key] = ref

    def _check_layer(self, name: str, layer: int | None, expert: int | None) -> None:
        c = self.config
        if layer is not None and layer >= c.n_layers:
            self._fail(name, f"is for layer {layer}, but the base has {c.n_layers} layers (num_hidden_layers)")
        if expert is not None and expert >= c.n_experts:
            self._fail(name, f"is for expert {expert}, but the base has {c.n_experts} experts per layer")

    def _pair(self, module: str, a: TensorRef, b: TensorRef) -> None:
        name = f"{PREFIX}{module}.lora_A.weight"
        if (m := FUSED.fullmatch(module)) is not None:
            self._fused(name, int(m.group("layer")), module, a, b)
            return
        parsed = parse_hf_name(f"{module}.weight")
        if parsed is None or parsed[0] is None:
            what = "targets a module a Marco model does not have"
            if parsed is not None:  # embeddings or the output head
                what = "is a LoRA on the embeddings or output head, which a tied model shares"
            self._fail(name, what, TIED_HINT if parsed is not None else "the adapter was made for another model")
        layer, kind, expert = parsed
        assert layer is not None  # checked above
        if kind.gguf not in LORA_KINDS:
            self._fail(name, f"targets {module}, a vector; LoRA changes matrices")
        self._check_layer(name, layer, expert)
        key = module + (".weight" if self._is_parameter(module) else "")
        out, inp = kind.shape(self.config)
        rank = self._rank(name, key, a, b, out, inp, 1)
        self._add(Site(layer, kind.gguf, expert), key, a, b, rank, 1, 0, 0)

    def _is_parameter(self, module: str) -> bool:
        """A router targeted through target_parameters is keyed `...mlp.gate.weight` for PEFT's patterns."""
        return any(f"{module}.weight".endswith(p) for p in self.settings.target_parameters)

    def _fused(self, name: str, layer: int, module: str, a: TensorRef, b: TensorRef) -> None:
        c, E = self.config, self.config.n_experts
        self._check_layer(name, layer, None)
        shapes = {"gate_up_proj": (2 * c.expert_ff, c.hidden), "down_proj": (c.hidden, c.expert_ff)}
        found = (b.shape[0] if len(b.shape) == 2 else -1, a.shape[-1] if len(a.shape) == 2 else -1)
        param = next((p for p, s in shapes.items() if s == found), None)
        if param is None:
            self._fail(
                name,
                f"and its lora_B give a matrix [{found[0]}, {found[1]}]; the base's fused experts are "
                f"gate_up_proj [{2 * c.expert_ff}, {c.hidden}] or down_proj [{c.hidden}, {c.expert_ff}] per expert",
            )
        key = f"model.layers.{layer}.mlp.experts.{param}"
        out, inp = shapes[param]
        rank = self._rank(name, key, a, b, out, inp, E)
        kinds = (
            (("ffn_gate_exps", 0), ("ffn_up_exps", c.expert_ff)) if param == "gate_up_proj" else (("ffn_down_exps", 0),)
        )
        for kind, first in kinds:
            for e in range(E):
                self._add(Site(layer, kind, e), key, a, b, rank, E, e, first)

    def _rank(self, name: str, key: str, a: TensorRef, b: TensorRef, out: int, inp: int, n_experts: int) -> int:
        r, _ = self.settings.rank_alpha(key)
        want_a, want_b = (r * n_experts, inp), (out, r * n_experts)
        if a.shape != want_a or b.shape != want_b:
            stacked = f" for each of {n_experts} experts" if n_experts > 1 else ""
            raise AdapterError(
                f"{self.file}: tensor {name} is {list(a.shape)} and its lora_B {list(b.shape)}, but rank {r}"
                f"{stacked} ({self.settings.path.name}) on the base's [{out}, {inp}] needs {list(want_a)} and "
                f"{list(want_b)}",
                "the adapter's config and weights disagree, or it was made for another model",
            )
        return r

    def _add(self, site: Site, key: str, a: TensorRef, b: TensorRef, rank: int, E: int, e: int, first: int) -> None:
        if site in self.pairs:
            raise AdapterError(f"{self.file}: two LoRA pairs change {key} (expert {site.expert})", REDO)
        _, alpha = self.settings.rank_alpha(key)
        self.pairs[site] = Pair(key, a, b, rank, alpha, self.settings.scale(rank, alpha), E, e, first)

    # --- reading factors ---
    def read_replaced(self, name: str, start: int, count: int) -> np.ndarray:
        """Rows of a modules_to_save tensor, as float32."""
        return self._reader.read_rows(self.replaced[name].name, start, count)

    def factors(self, pair: Pair, first: int = 0, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(A [rank, in], B[first:first+count] [count, rank]) of a pair as float32."""
        count = (pair.b.shape[0] if pair.n_experts == 1 else self._b_rows(pair)) - first if count is None else count
        if pair.n_experts == 1:
            return self._reader.read_rows(pair.a.name, 0, pair.rank), self._reader.read_rows(pair.b.name, first, count)
        a = self._reader.read_rows(pair.a.name, pair.expert * pair.rank, pair.rank)
        start = pair.b_first + first
        return a, self._fused_b(pair.b)[pair.expert, start : start + count]

    def _b_rows(self, pair: Pair) -> int:
        """Rows of one kind in a fused lora_B: I for gate or up (halves of gate_up_proj), H for down."""
        return self.config.expert_ff if pair.key.endswith("gate_up_proj") else self.config.hidden

    def _fused_b(self, b: TensorRef) -> np.ndarray:
        """A fused lora_B [out, r*E] (column k*E + e) as [E, out, r], read once and kept for the next blocks."""
        with self._lock:
            if (hit := self._b_cache.get(b.name)) is not None:
                self._b_cache.move_to_end(b.name)
                return hit
        out, E = b.shape[0], self.config.n_experts
        whole = self._reader.read_rows(b.name, 0, out).reshape(out, -1, E)
        per_expert = np.ascontiguousarray(whole.transpose(2, 0, 1))
        with self._lock:
            self._b_cache[b.name] = per_expert
            while len(self._b_cache) > B_CACHE:
                self._b_cache.popitem(last=False)
        return per_expert

    def delta(self, pair: Pair, first: int, count: int) -> np.ndarray:
        """Rows [first, first+count) of scale * B @ A, in PEFT's order of operations ((B @ A) * scale)."""
        a, b = self.factors(pair, first, count)
        d = b @ a
        d *= np.float32(pair.scale)
        return d


META = "general.lora."  # a merged GGUF's record of its adapter (llama.cpp reads no general.lora.* key)


def lora_metadata(adapter: LoraAdapter) -> dict[str, gguf.GGUFValue]:
    """general.lora.* keys for a GGUF with `adapter` merged in: its folder name, rank, alpha, rsLoRA, the
    tensor kinds it changes and the tensors it replaces (modules_to_save)."""
    s, V = adapter.settings, gguf.GGUFValueType
    kv = {
        META + "name": gguf.GGUFValue(adapter.folder.resolve().name, V.STRING),
        META + "rank": gguf.GGUFValue(s.r, V.UINT32),
        META + "alpha": gguf.GGUFValue(s.alpha, V.FLOAT32),
        META + "use_rslora": gguf.GGUFValue(s.use_rslora, V.BOOL),
    }
    if adapter.kinds:  # GGUF arrays may not be empty
        kv[META + "kinds"] = gguf.GGUFValue(adapter.kinds, V.ARRAY, V.STRING)
    if adapter.replaced:
        kv[META + "replaced"] = gguf.GGUFValue(sorted(adapter.replaced), V.ARRAY, V.STRING)
    if s.base_model:
        kv[META + "base_model"] = gguf.GGUFValue(s.base_model, V.STRING)
    return kv


TIED_HINT = "use modules_to_save for a retrained embedding or output matrix"
REDO = "the adapter file is damaged: save it again with PEFT"
