"""What a card says about each GGUF, read from that file alone: its quant types by share of its weights, its
bits per weight, its experts (a pruned file keeps fewer), its importance matrix; and which model it is, so
that one card never describes two models.

A preset's description is not used: it states what the preset aims for ("attn_v and ffn_down get Q6_K"),
and a file can differ (Marco-Nano's 384-wide ffn_down rows cannot take K-quants and fall back to Q5_0/Q8_0).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from marco_gguf.arch.qwen3moe import parse_name
from marco_gguf.base.errors import ExportError
from marco_gguf.gguf_io.info import GGUFInfo, read_info
from marco_gguf.gguf_io.reader import read_header
from marco_gguf.quant.plan_file import plan_sentence
from marco_gguf.quant.presets import builtin_presets, load_preset

PRUNE = "marco.prune."  # keys prune writes (experts/prune.py)
TYPES_NOTE = (
    "Description: the quant types of each file's weight matrices by share of its weights (xN: in N layers), "
    "read from the file; norms are F32 in every file."
)


@dataclass(frozen=True)
class CardRow:
    """One GGUF in the folder, as the table shows it."""

    filename: str
    quant_type: str
    size_bytes: int
    bits_per_weight: float
    description: str
    imatrix_dataset: str | None = None  # set for an importance-matrix quant: the text its imatrix was computed on
    experts: int = 0  # experts per layer in this file
    experts_used: int = 0  # per token
    pruned_from: int | None = None  # the whole model's experts per layer, for a pruned file
    plan: dict[str, Any] | None = None  # a planned file's quantize.plan.* keys (budget, objective, ...)


def _share(fraction: float) -> str:
    pct = 100 * fraction
    if pct < 0.1:
        return "<0.1 %"
    whole = f"{pct:.0f}"
    return f"{whole} %" if pct >= 10 and (whole != "100" or pct == 100) else f"{pct:.1f} %"  # never a false 100


def tensor_types(info: GGUFInfo) -> str:
    """'Q4_K 71 %; Q6_K 17 % (attn_v x12, ffn_down_exps x12); ...': each type of the file's matrices by share of
    their weights, largest first; every type but the largest names the tensors that have it."""
    weights: dict[str, int] = defaultdict(int)
    kinds: dict[str, dict[tuple[str, bool], int]] = defaultdict(lambda: defaultdict(int))
    for t in info.tensors:
        if len(t.shape) < 2:  # norms: F32 whatever the preset
            continue
        parsed = parse_name(t.name)
        weights[t.type] += t.n_elements
        # a layer's kind is counted in layers ("attn_v x12"), a model's own tensor by name ("token_embd")
        kinds[t.type][
            (parsed[1].gguf, parsed[0] is not None) if parsed else (t.name.removesuffix(".weight"), False)
        ] += 1
    total = sum(weights.values())
    order = sorted(weights, key=lambda q: (-weights[q], q))
    parts = []
    for i, q in enumerate(order):
        ranked = sorted(kinds[q].items(), key=lambda kv: -kv[1])
        names = ", ".join(f"{k} x{n}" if layered else k for (k, layered), n in ranked)
        parts.append(f"{q} {_share(weights[q] / total)}" + (f" ({names})" if i else ""))
    return "; ".join(parts)


def quant_type_names() -> dict[int, str]:
    """general.file_type -> the preset's name, from the shipped presets."""
    out: dict[int, str] = {}
    for preset_id in builtin_presets():
        p = load_preset(preset_id)
        out.setdefault(int(p.file_type), p.name)
    return out


def _type_name(file_type: int | None, names: dict[int, str]) -> str:
    if file_type is None:
        return "file type not recorded"
    if file_type in names:
        return names[file_type]
    try:
        return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return f"file type {file_type}"


def card_row(path: Path, names: dict[int, str] | None = None) -> CardRow:
    """The table row of one GGUF, every figure from its own header."""
    info, fields = read_info(path), read_header(path).fields
    name = _type_name(info.file_type, names if names is not None else quant_type_names())
    experts, used = info.hparams.get("expert_count", 0), info.hparams.get("expert_used_count", 0)
    pruned_from = fields.get(PRUNE + "source_expert_count")
    said = []
    if pruned_from is not None:
        method = fields.get(PRUNE + "method", "method not recorded")
        said.append(f"Pruned: {experts} of {pruned_from} experts kept in every layer ({method}), {used} per token.")
    if info.plan:  # planned for a budget (convert --target-size/--target-bpw): no preset's name fits it
        name = f"Plan {info.plan.get('target', '?')}"
        said.append(plan_sentence(info.plan))
    dataset = None
    if "quantize.imatrix.file" in fields:  # written by convert --imatrix/--calibrate, as by llama-quantize
        dataset = fields.get("quantize.imatrix.dataset") or "text not recorded"
        chunks = fields.get("quantize.imatrix.chunks_count")
        said.append(f"Importance-matrix quant (imatrix from {f'{dataset}, {chunks} chunks' if chunks else dataset}).")
        name = f"i1-{name}"
    said.append(tensor_types(info))
    return CardRow(
        path.name,
        name,
        info.file_size,
        info.bits_per_weight,
        " ".join(said),
        dataset,
        experts,
        used,
        pruned_from,
        info.plan or None,
    )


def model_of(fields: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two files the same model whatever their quant types, pruned or not: the architecture, its
    widths and depth, vocabulary, the whole model's experts, and the source when recorded."""
    arch = fields.get("general.architecture")
    h = {k: fields.get(f"{arch}.{k}") for k in ("block_count", "embedding_length", "expert_feed_forward_length")}
    whole = fields.get(PRUNE + "source_expert_count", fields.get(f"{arch}.expert_count"))
    source = fields.get("general.base_model.0.repo_url") or fields.get("general.repo_url") or fields.get("general.name")
    return arch, *h.values(), len(fields.get("tokenizer.ggml.tokens", ())), whole, source


def _describe(key: tuple[Any, ...]) -> str:
    arch, layers, width, expert_ff, vocab, experts, source = key
    return (
        f"{source or 'unnamed'}: {arch}, {layers} layers, width {width}, {experts} experts of width {expert_ff}, "
        f"{vocab:,} tokens"
    )


def one_model(folder: Path, files: list[Path]) -> dict[str, Any]:
    """The fields of the largest file, once every file is known to be of one model; refuses a mixed folder."""
    headers = {f: read_header(f).fields for f in files}
    groups: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for f, fields in headers.items():
        groups[model_of(fields)].append(f.name)
    if len(groups) > 1:
        found = "; ".join(f"{', '.join(names)} ({_describe(key)})" for key, names in groups.items())
        raise ExportError(
            f"{folder}: holds files of {len(groups)} different models: {found}",
            "a card describes one model: put each model's files in a folder of its own and run card on each",
        )
    return headers[max(files, key=lambda f: (f.stat().st_size, f.name))]


def experts_line(arch: str, rows: list[CardRow]) -> str:
    """The header's architecture bullet: the whole model's experts, and which files are pruned."""
    whole = max(r.pruned_from or r.experts for r in rows)
    used = rows[0].experts_used
    line = f"- **Architecture**: {arch}" + (f", {used} of {whole} experts active per token" if used else "")
    pruned = [r for r in rows if r.pruned_from is not None]
    if not pruned:
        return line
    kept = "; ".join(f"{r.filename} keeps {r.experts}" for r in pruned)
    n = len(pruned)
    every = "every file here is" if n == len(rows) else f"{n} of {len(rows)} files {'is' if n == 1 else 'are'}"
    return (
        f"{line}\n- **Pruned**: {every} pruned to fewer experts per layer ({kept} of {whole}): a smaller model "
        "that answers differently from the whole one; measure it (marco-gguf quality) before trusting it"
    )
