"""`prune()`: a smaller Marco that keeps the N best experts of every layer, chosen from an `experts` usage file.

llama.cpp reads one `expert_count` for all layers, so every layer keeps the same N (at least the experts
per token). Scores: `reap`, REAP's saliency (arXiv 2510.13999: the mean over an expert's tokens of gate
weight x ||expert output||; an expert no token reached scores 0), or `frequency`, the tokens routed to it;
both over all the usage file's texts together, equal scores keeping the lower index. Kept experts keep
their order (renumbered 0..N-1), so the router's rows and the expert stacks are sliced alike.

SOURCE is a GGUF (tensors sliced byte for byte, never requantized: prune_gguf.py), a checkpoint folder
(converted in the same streaming pass with only the kept experts, tensor types decided as for the whole
model, so the result equals converting and then pruning the GGUF) or, with `format="hf"`, a checkpoint
written back as a smaller checkpoint (prune_hf.py). What was kept and from what is recorded as
`marco.prune.*` keys (config.json's `marco_prune` for HF).
"""

from __future__ import annotations

import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from marco_gguf.arch.qwen3moe import LM_HEAD, lm_head_is_tied, parse_name, plan_tensors
from marco_gguf.base.errors import PruneError
from marco_gguf.base.files import check_writable
from marco_gguf.base.progress import Progress
from marco_gguf.experts.identity import ModelIdentity, checkpoint_identity, gguf_identity
from marco_gguf.experts.report import ranked
from marco_gguf.experts.usage_file import read_usage
from marco_gguf.hf.checkpoint import Checkpoint
from marco_gguf.quant.imatrix_file import Imatrix, read_imatrix, write_imatrix

METHODS = ("reap", "frequency")
FORMATS = ("gguf", "hf")
PREFIX = "marco.prune."


@dataclass(frozen=True)
class PruneResult:
    path: Path
    format: str
    method: str
    experts_before: int
    experts_after: int
    kept: list[list[int]] = field(repr=False)
    size_bytes: int
    seconds: float
    imatrix: Path | None = None  # the sliced imatrix written beside a pruned GGUF
    next_step: str = ""  # the commands that measure what pruning cost, with this run's file names

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {**d, "path": str(self.path), "imatrix": str(self.imatrix) if self.imatrix else None}


def choose_experts(usage, keep: int, method: str) -> list[list[int]]:
    """Per layer, the `keep` best experts by `method`, in index order."""
    total = usage.combined()
    scores = total.reap if method == "reap" else total.counts.astype(np.float64)
    return [sorted(ranked(row)[:keep].tolist()) for row in scores]


def check_request(method: str, fmt: str) -> None:
    if method not in METHODS:
        raise PruneError(f"unknown method {method!r}", f"use one of: {', '.join(METHODS)}")
    if fmt not in FORMATS:
        raise PruneError(f"unknown format {fmt!r}", f"use one of: {', '.join(FORMATS)}")


def check_usage(usage, source: ModelIdentity, usage_path: Path, source_path: Path, keep: int) -> None:
    """The usage file must describe SOURCE's model, and N must lie between the experts per token and the count."""
    m = usage.model
    for what, theirs, ours in (
        ("architecture", m.architecture, source.architecture),
        ("layers", m.layers, source.layers),
        ("experts", m.experts, source.experts),
    ):
        if theirs != ours:
            raise PruneError(
                f"{usage_path}: measured on a model with {what} {theirs} ({m.file}), but {source_path} has {ours}",
                "measure this model: marco-gguf experts MODEL.gguf --usage usage.json",
            )
    if (m.shapes_sha256, m.router_sha256) != (source.shapes_sha256, source.router_sha256):
        raise PruneError(
            f"{usage_path}: measured on another model ({m.file}: its "
            + ("tensor shapes" if m.shapes_sha256 != source.shapes_sha256 else "router weights")
            + f" differ from {source_path}'s)",
            "measure this model: marco-gguf experts MODEL.gguf --usage usage.json",
        )
    span = f"keep from {source.experts_per_token} (the experts per token) to {source.experts - 1}"
    if keep == source.experts:
        raise PruneError(f"--keep {keep}: keeps all {keep} experts of {source_path}, which prunes nothing", span)
    if not source.experts_per_token <= keep < source.experts:
        raise PruneError(
            f"--keep {keep}: out of range for {source_path} ({source.experts} experts, "
            f"{source.experts_per_token} per token)",
            span,
        )


def prune_metadata(usage, kept: list[list[int]], method: str, source: ModelIdentity) -> dict[str, Any]:
    """marco.prune.* keys: what was kept (layer after layer), how it was chosen, and from which model."""
    V = gguf.GGUFValueType
    return {
        PREFIX + "method": gguf.GGUFValue(method, V.STRING),
        PREFIX + "source_expert_count": gguf.GGUFValue(source.experts, V.UINT32),
        PREFIX + "source_router_sha256": gguf.GGUFValue(source.router_sha256, V.STRING),
        PREFIX + "kept_experts": gguf.GGUFValue([e for layer in kept for e in layer], V.ARRAY, V.UINT32),
        PREFIX + "usage_texts": gguf.GGUFValue(usage.labels, V.ARRAY, V.STRING),
        PREFIX + "usage_tokens": gguf.GGUFValue(sum(t.tokens for t in usage.texts), V.UINT64),
    }


def slice_imatrix(im: Imatrix, kept: list[list[int]], n_experts: int) -> Imatrix:
    """The importance matrix of the pruned model: expert entries keep the kept experts' sums and counts."""
    entries = {}
    for name, e in im.entries.items():
        parsed = parse_name(name)
        if parsed is not None and parsed[1].scope == "expert" and parsed[0] is not None and e.n_mat == n_experts:
            keep = kept[parsed[0]]
            e = type(e)(e.sums.reshape(n_experts, e.ne0)[keep].reshape(-1), e.counts[keep])
        entries[name] = e
    return Imatrix(entries, im.datasets, im.chunk_count, im.chunk_size, im.legacy, im.has_metadata)


def _source_identity(source: Path) -> ModelIdentity:
    with Checkpoint(source) as ckpt:
        c = ckpt.config
        untied = LM_HEAD in ckpt.tensors and not lm_head_is_tied(ckpt.read_rows, ckpt.tensors)
        planned = plan_tensors(c, ckpt.tensors, keep_lm_head=untied)
        return checkpoint_identity(source, c, planned, ckpt.read_rows)


def output_path(source: Path, keep: int, fmt: str, preset: str, imatrix: bool, outfile: str | Path | None) -> Path:
    """`outfile`, else in the current folder: `<gguf stem>-prunedN.gguf` for a GGUF, `<folder>-prunedN` for a
    checkpoint written back, convert's `<folder>-prunedN[-i1]-<PRESET>.gguf` for a checkpoint converted."""
    if outfile:
        return Path(outfile)
    if source.is_file():
        return Path.cwd() / f"{source.stem}-pruned{keep}.gguf"
    name = f"{source.resolve().name}-pruned{keep}"
    if fmt == "hf":
        return Path.cwd() / name
    from marco_gguf.convert import output_path as convert_output_path
    from marco_gguf.quant.presets import load_preset

    return convert_output_path(source, load_preset(preset), outfile=None, outdir=None, name=name, imatrix=imatrix)


def quality_command(source: Path, out: Path, fmt: str, preset: str, imatrix: str | Path | None) -> str:
    """The shell commands comparing the pruned model with the whole one (`quality`), named as this run named
    them: a GGUF against its source; a checkpoint's GGUF against the checkpoint converted alike, beside it."""
    from marco_gguf.convert import output_path as convert_output_path
    from marco_gguf.quant.presets import load_preset

    q, steps = (lambda p: shlex.quote(str(p))), []
    alike = f" --preset {preset}" + (f" --imatrix {q(imatrix)}" if imatrix is not None and fmt != "hf" else "")

    def converted(folder: Path) -> Path:
        steps.append(f"marco-gguf convert {q(folder)}{alike} --outdir {q(out.parent)}")
        chosen = load_preset(preset)
        return convert_output_path(folder, chosen, outfile=None, outdir=out.parent, name=None, imatrix=bool(imatrix))

    pruned = converted(out) if fmt == "hf" else out
    ref = source if source.is_file() else converted(source)
    return " && ".join([*steps, f"marco-gguf quality {q(pruned)} --ref {q(ref)} --text EVAL.txt"])


def check_output(out: Path, force: bool) -> None:
    """Before any work: an existing output without force, a folder that cannot be written."""
    if (out.exists() or out.is_symlink()) and not force:
        raise PruneError(f"{out}: already exists", "pass --force to overwrite it, or choose another -o")
    check_writable(out, hint="choose another -o", error=PruneError)


def prune(
    source: str | Path,
    *,
    keep: int,
    usage: str | Path,
    method: str = "reap",
    preset: str | None = None,
    imatrix: str | Path | None = None,
    outfile: str | Path | None = None,
    format: str = "gguf",
    threads: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> PruneResult:
    """Keep the `keep` best experts of every layer of `source` (a GGUF or a checkpoint folder) by `method`
    over the usage file `usage`; write a GGUF (`preset` for a checkpoint, default q8_0) or, `format="hf"`,
    a checkpoint folder. `imatrix` is sliced alike: used to quantize a checkpoint, written beside a GGUF."""
    started, source, usage_path = time.perf_counter(), Path(source), Path(usage)
    check_request(method, format)
    is_gguf = source.is_file()
    if is_gguf and (format == "hf" or preset is not None):
        raise PruneError(
            f"{source}: a GGUF is sliced as it is, without requantizing: "
            + ("--format hf" if format == "hf" else "--preset")
            + " needs a checkpoint folder as SOURCE",
            "give the checkpoint folder, or leave the option out",
        )
    out = output_path(source, keep, format, preset or "q8_0", imatrix is not None, outfile)
    check_output(out, force)
    measured = read_usage(usage_path)
    identity = gguf_identity(source) if is_gguf else _source_identity(source)
    check_usage(measured, identity, usage_path, source, keep)
    kept = choose_experts(measured, keep, method)
    extra = prune_metadata(measured, kept, method, identity)
    sliced = slice_imatrix(read_imatrix(imatrix), kept, identity.experts) if imatrix is not None else None
    imatrix_out = None
    if is_gguf:
        from marco_gguf.experts.prune_gguf import prune_gguf

        path, imatrix_out = prune_gguf(source, keep, kept, extra, out, imatrix=sliced, force=force, progress=progress)
    elif format == "hf":
        from marco_gguf.experts.prune_hf import prune_checkpoint

        path = prune_checkpoint(source, kept, method, identity, out, force=force)
    else:
        path = _convert_pruned(
            source,
            out,
            kept,
            extra,
            sliced,
            imatrix,
            preset=preset or "q8_0",
            threads=threads,
            force=force,
            progress=progress,
        )
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    seconds = time.perf_counter() - started
    step = quality_command(source, path, format, preset or "q8_0", imatrix)
    return PruneResult(path, format, method, identity.experts, keep, kept, size, seconds, imatrix_out, step)


def _convert_pruned(
    source: Path,
    out: Path,
    kept: list[list[int]],
    extra: dict,
    sliced: Imatrix | None,
    imatrix: str | Path | None,
    *,
    preset: str,
    threads: int | None,
    force: bool,
    progress: Progress | None,
) -> Path:
    from marco_gguf.convert import convert
    from marco_gguf.quant.presets import load_preset

    options: dict[str, Any] = dict(
        preset=load_preset(preset),
        outfile=out,
        threads=threads,
        force=force,
        progress=progress,
        experts=kept,
        metadata=extra,
    )
    if sliced is None:
        return convert(source, **options).path
    with tempfile.TemporaryDirectory(prefix=".marco-prune-", dir=out.parent) as scratch:
        tmp = write_imatrix(sliced, Path(scratch) / "pruned.imatrix.gguf")
        return convert(source, imatrix=tmp, imatrix_label=str(imatrix), **options).path
