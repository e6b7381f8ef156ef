"""Reading a GGUF back: hyperparameters, tokenizer, tensor groups, active bytes per token, RAM estimate.

Shared by `inspect`, `verify`, `chat` (RAM check) and `bench` (roofline). Only the header is
parsed; tensor data is never touched here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import gguf
from gguf import GGUFValueType as V

from marco_gguf.arch import qwen3moe as spec
from marco_gguf.arch.qwen3moe import ARCH_KEY, ARCH_NAME, CHAT_TEMPLATE_KEY, DEFAULT_CTX, GROUPS
from marco_gguf.arch.sampling import gguf_sampling
from marco_gguf.base.errors import GGUFFileError
from marco_gguf.gguf_io.check import check_qwen3moe
from marco_gguf.gguf_io.reader import DAMAGED, check_file, read_header

MARCO_PREFIX = "marco."  # keys marco-gguf adds beyond llama.cpp's (prune records what it kept as marco.prune.*)
PLAN_PREFIX = "quantize.plan."  # how a size-targeted plan was made (convert --target-size/--target-bpw)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first)
    type: str
    n_bytes: int
    group: str

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GGUFInfo:
    """Everything `inspect` reports, as plain data (`as_dict()` for --json)."""

    path: Path
    file_size: int
    architecture: str
    name: str | None
    file_type: int | None
    hparams: dict[str, Any]
    tokenizer: dict[str, Any]
    has_chat_template: bool
    sampling: dict[str, float | int]  # the file's general.sampling.* by Sampling field (arch/sampling.py)
    tensors: tuple[TensorInfo, ...] = field(repr=False)
    marco: dict[str, Any] = field(default_factory=dict)  # marco.* keys marco-gguf wrote (a pruned file's record)
    plan: dict[str, Any] = field(default_factory=dict)  # a planned file's quantize.plan.* keys, without the prefix

    @property
    def file_type_name(self) -> str | None:
        """general.file_type as llama.cpp names it (gguf-py's LlamaFileType): 15 -> "Q4_K_M", 0 -> "F32"."""
        if self.file_type is None:
            return None
        try:
            return gguf.LlamaFileType(self.file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            return f"file type {self.file_type}"

    @property
    def context_length(self) -> int | None:
        return self.hparams.get("context_length")

    def context_note(self, n_ctx: int) -> str | None:
        """What to tell someone asking for more context than the model has (llama.cpp warns alike, as
        "possible training context overflow"); None when n_ctx is within it."""
        if self.context_length is None or n_ctx <= self.context_length:
            return None
        return (
            f"--ctx {n_ctx:,} is beyond the model's context length of {self.context_length:,} tokens "
            f"({self.architecture}.context_length): positions past it are outside what it was trained on"
        )

    def group_totals(self) -> dict[str, dict[str, Any]]:
        """Per tensor group: tensors, parameters, bytes, bits/weight, and its tensors' types (type -> how many,
        most first: a planned file mixes several within a group)."""
        out = {}
        for g in GROUPS:
            ts = [t for t in self.tensors if t.group == g]
            n, b = sum(t.n_elements for t in ts), sum(t.n_bytes for t in ts)
            types: dict[str, int] = {}
            for t in ts:
                types[t.type] = types.get(t.type, 0) + 1
            out[g] = {
                "tensors": len(ts),
                "parameters": n,
                "bytes": b,
                "bits_per_weight": 8 * b / n if n else 0.0,
                "types": dict(sorted(types.items(), key=lambda kv: (-kv[1], kv[0]))),
            }
        return out

    @property
    def n_parameters(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8 * sum(t.n_bytes for t in self.tensors) / max(1, self.n_parameters)

    # the derived figures are the spec's (qwen3moe.py), computed from this file's tensors and keys
    @property
    def expert_fraction(self) -> float:
        return spec.expert_fraction(self.hparams)

    @property
    def active_parameters(self) -> int:
        return spec.active_parameters(self.tensors, self.hparams)

    @property
    def bytes_per_token(self) -> int:
        return bytes_per_token(self)

    def kv_cache_bytes(self, n_ctx: int) -> int:
        return spec.kv_cache_bytes(self.hparams, n_ctx)

    def ram_needed(self, n_ctx: int) -> dict[str, int]:
        return spec.ram_needed(self.tensors, self.hparams, n_ctx)

    def as_dict(self, n_ctx: int = DEFAULT_CTX) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "file_size": self.file_size,
            "architecture": self.architecture,
            "name": self.name,
            "file_type": self.file_type,
            "file_type_name": self.file_type_name,
            "hparams": self.hparams,
            "tokenizer": self.tokenizer,
            "has_chat_template": self.has_chat_template,
            "sampling": self.sampling,
            "parameters": self.n_parameters,
            "bits_per_weight": self.bits_per_weight,
            "groups": self.group_totals(),
            "active_parameters": self.active_parameters,
            "bytes_per_token": self.bytes_per_token,
            "ctx": n_ctx,
            "ram_needed": self.ram_needed(n_ctx),
            "context_note": self.context_note(n_ctx),
            "marco": self.marco,
            "plan": self.plan,
            "tensors": [
                {"name": t.name, "shape": list(t.shape), "type": t.type, "bytes": t.n_bytes, "group": t.group}
                for t in self.tensors
            ],
        }


def bytes_per_token(info: GGUFInfo) -> int:
    """Weight bytes one generated token reads: the one formula (qwen3moe.bytes_per_token) inspect and bench report."""
    return spec.bytes_per_token(info.tensors, info.hparams)


def _tokenizer_summary(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": fields.get("tokenizer.ggml.model"),
        "pre": fields.get("tokenizer.ggml.pre"),
        "tokens": len(fields.get("tokenizer.ggml.tokens", ())),
        "merges": len(fields.get("tokenizer.ggml.merges", ())),
        **{
            k: fields.get(f"tokenizer.ggml.{k}")
            for k in ("bos_token_id", "eos_token_id", "padding_token_id", "add_bos_token", "add_eos_token")
        },
    }


def read_info(path: str | Path) -> GGUFInfo:
    """Parse a GGUF's header into GGUFInfo, validated (see _read_info); cached while the file is unchanged,
    since check_model and load_model both read it before a load."""
    path = Path(path)
    check_file(path)
    st = path.stat()
    return _cached_info(path.resolve(), st.st_size, st.st_mtime_ns, path)


@lru_cache(maxsize=8)
def _cached_info(resolved: Path, size: int, mtime_ns: int, path: Path) -> GGUFInfo:
    return _read_info(path)


def _read_info(path: Path) -> GGUFInfo:
    """Parse a GGUF's header into GGUFInfo (no tensor data is read); a qwen3moe file is also checked for
    everything llama.cpp would abort or fail on while loading it (gguf_check.py)."""
    header = read_header(path)
    fields = header.fields
    arch = fields.get(ARCH_KEY) or "?"
    if header.types.get(ARCH_KEY, V.STRING) != V.STRING:
        raise GGUFFileError(
            f"{path}: key general.architecture is {header.types['general.architecture'].name}, expected STRING", DAMAGED
        )
    if arch == ARCH_NAME:
        check_qwen3moe(path, header, arch)
    prefix = f"{arch}."
    hparams = {k[len(prefix) :]: v for k, v in fields.items() if k.startswith(prefix)}
    tensors = tuple(TensorInfo(t.name, t.shape, t.type.name, t.n_bytes, spec.group_of(t.name)) for t in header.tensors)
    return GGUFInfo(
        Path(path),
        Path(path).stat().st_size,
        arch,
        fields.get("general.name"),
        fields.get("general.file_type"),
        hparams,
        _tokenizer_summary(fields),
        CHAT_TEMPLATE_KEY in fields,
        gguf_sampling(fields),
        tensors,
        {k: v for k, v in fields.items() if k.startswith(MARCO_PREFIX)},
        {k.removeprefix(PLAN_PREFIX): v for k, v in fields.items() if k.startswith(PLAN_PREFIX)},
    )


def require_qwen3moe(info: GGUFInfo) -> None:
    if info.architecture != ARCH_NAME:
        raise GGUFFileError(
            f"{info.path}: architecture {info.architecture!r} is not {ARCH_NAME}",
            "marco-gguf runs Marco (qwen3moe) GGUFs only",
        )
