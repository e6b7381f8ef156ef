"""`convert()`: a Marco checkpoint folder -> one GGUF file, in a single streaming pass.

Work is cut into blocks (one expert, or a few MiB of rows of a large tensor); a thread pool
reads, widens to float32 and quantizes blocks while the main thread writes finished blocks in
order, keeping at most a fixed number in flight, so memory does not grow with model size.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import gguf
import numpy as np
from gguf import MODEL_TENSOR as T

from marco_gguf.arch.qwen3moe import LM_HEAD, PlannedTensor, keep_experts, lm_head_is_tied, plan_tensors
from marco_gguf.base.errors import OutputError, PlanError
from marco_gguf.base.files import write_text_atomic
from marco_gguf.base.machine import usable_cpus
from marco_gguf.base.progress import Progress, ProgressEvent
from marco_gguf.gguf_io.metadata import build_metadata, count_parameters
from marco_gguf.gguf_io.writer import GGUFStreamWriter, TensorSpec, check_output, encode_header
from marco_gguf.hf.checkpoint import Checkpoint
from marco_gguf.hf.hub import resolve_source
from marco_gguf.hf.lora import lora_metadata
from marco_gguf.hf.lora_merge import MergedSource
from marco_gguf.llama.ggml import prepare, quantize_rows
from marco_gguf.quant.importance import (
    Importance,
    add_imatrix_keys,
    check_required,
    experts_of,
    load_importance,
)
from marco_gguf.quant.plan import Model, Plan, Target, make_plan, parse_target
from marco_gguf.quant.plan_file import plan_kv, render_toml
from marco_gguf.quant.presets import Preset, check_overrides, load_preset, parse_overrides

BLOCK_BYTES = 8 << 20  # float32 bytes per work block: large enough to amortise calls, small for memory


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion produced, with its own measurements."""

    path: Path
    preset: str
    file_type: str
    size_bytes: int
    n_tensors: int
    n_parameters: int
    bits_per_weight: float
    seconds: float
    tied_embeddings: bool
    tokenizer: dict = field(default_factory=dict)
    tensor_types: dict = field(default_factory=dict)  # GGML type name -> number of tensors
    hub_repo: str | None = None  # owner/name when SOURCE was a hub id
    hub_commit: str | None = None  # the commit it was converted from
    imatrix: str | None = None  # the importance matrix the tensors were quantized with
    lora: str | None = None  # the LoRA adapter folder merged in
    plan: dict | None = None  # for a size or bits/weight target: quant.plan.PlanSummary.as_dict()

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["path"] = str(self.path)
        return d


def default_threads() -> int:
    """Quantizing is compute-bound per block and releases the GIL: one worker per usable CPU."""
    return len(usable_cpus()) or 1


IMATRIX_MARK = "i1"  # publishers' mark for importance-matrix quants: Marco-Mini-Instruct-i1-Q4_K_M.gguf


def output_path(
    source: Path,
    preset: Preset | str,
    *,
    outfile: Path | None,
    outdir: Path | None,
    name: str | None,
    imatrix: bool = False,
) -> Path:
    """`--outfile`, else `<outdir or cwd>/<name or folder name>[-i1]-<PRESET>.gguf` (publisher convention)."""
    if outfile is not None:
        if outdir is not None:
            raise OutputError("--outfile and --outdir are mutually exclusive", "give one of them")
        return Path(outfile)
    stem = (name or source.resolve().name).replace(" ", "-").replace("/", "-")
    mark = f"-{IMATRIX_MARK}" if imatrix else ""
    label = preset if isinstance(preset, str) else preset.name
    return Path(outdir or Path.cwd()) / f"{stem}{mark}-{label}.gguf"


def row_blocks(t: PlannedTensor) -> Iterator[tuple[str, int, int]]:
    """(source, first row, row count) blocks of at most BLOCK_BYTES of float32, in output order."""
    rows_per_block = max(1, BLOCK_BYTES // (4 * t.row_len))
    for piece in t.pieces:
        for r in range(0, piece.count, rows_per_block):
            yield piece.source, piece.start + r, min(rows_per_block, piece.count - r)


def quantize_block(
    qtype, rows: np.ndarray, first_row: int, rows_per_matrix: int, importance: np.ndarray | None
) -> np.ndarray:
    """Quantize rows starting at global row `first_row` of a tensor, each stacked matrix (expert) with its own
    slice of the importance vector, as llama-quant.cpp's llama_tensor_quantize_impl does."""
    if importance is None:
        return quantize_rows(qtype, rows)
    ne0, parts, r = rows.shape[1], [], 0
    while r < len(rows):
        g = first_row + r
        e, n = g // rows_per_matrix, min(len(rows) - r, rows_per_matrix - g % rows_per_matrix)
        parts.append(quantize_rows(qtype, rows[r : r + n], importance[e * ne0 : (e + 1) * ne0]))
        r += n
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _stream(
    ckpt: Checkpoint | MergedSource,
    planned: list[PlannedTensor],
    specs: list[TensorSpec],
    writer: GGUFStreamWriter,
    threads: int,
    progress: Progress | None,
    importance: Importance | None = None,
) -> None:
    def work(spec: TensorSpec, t: PlannedTensor, first: int, source: str, start: int, count: int) -> np.ndarray:
        vec = importance.for_tensor(t.name) if importance is not None else None
        return quantize_block(spec.type, ckpt.read_rows(source, start, count), first, t.n_rows // experts_of(t), vec)

    done, pending = len(writer.header), deque()  # type: ignore[var-annotated]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="marco-quant") as pool:
        try:
            for t, spec in zip(planned, specs):
                first = 0
                for block in row_blocks(t):
                    pending.append((spec.name, pool.submit(work, spec, t, first, *block)))
                    first += block[2]
                    while len(pending) > 2 * threads:
                        done = _drain_one(pending, writer, done, progress)
            while pending:
                done = _drain_one(pending, writer, done, progress)
        except BaseException:
            for _, fut in pending:
                fut.cancel()
            raise


def _drain_one(pending: deque, writer: GGUFStreamWriter, done: int, progress: Progress | None) -> int:
    name, fut = pending.popleft()
    data: np.ndarray = fut.result()
    writer.write(data)
    done += data.nbytes
    if progress is not None:
        progress(ProgressEvent(done, writer.total_bytes, "bytes", name))
    return done


def convert(
    source: str | Path,
    *,
    preset: str | Path | Preset | None = None,
    outfile: str | Path | None = None,
    outdir: str | Path | None = None,
    name: str | None = None,
    threads: int | None = None,
    force: bool = False,
    tensor_types: Sequence[str] = (),
    progress: Progress | None = None,
    revision: str | None = None,
    imatrix: str | Path | None = None,
    imatrix_label: str | None = None,
    experts: Sequence[Sequence[int]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    lora: str | Path | None = None,
    target_size: str | int | None = None,
    target_bpw: float | None = None,
    max_bytes_per_token: int | None = None,
    types: Sequence[str] = (),
    plan_out: str | Path | None = None,
    sensitivity: str | Path | None = None,
) -> ConvertResult:
    """Convert a Marco (qwen3_moe) checkpoint folder, or a hub id `owner/name` (at `revision`), to GGUF with
    `preset` (default q8_0); with `imatrix` (a GGUF or legacy .dat importance matrix) the quantizers weight by
    it, as llama-quantize's (`imatrix_label` is recorded as quantize.imatrix.file instead of the path).

    `target_size` ("8GB", "7.5GiB", bytes) or `target_bpw` plans each tensor's type instead of a preset: the
    least measured error within the target (and within `max_bytes_per_token` bytes read per generated token),
    choosing among `types` (default: every type llama.cpp's CPU backend runs; IQ types only with an imatrix);
    the plan is a preset, written to `plan_out` when given (quant/plan.py). With `sensitivity` (a GGUF of the
    same model, e.g. its Q8_0) each tensor's error is weighed by the KLD a unit of it costs there
    (quant/sensitivity.py): one llama.cpp pass per tensor, cached beside the output.

    `experts` keeps only those experts of each layer (one list per layer, all of one length; `prune` uses
    it), with tensor types decided as for the whole model, so the file equals the whole model's converted
    and then sliced; `metadata` adds GGUF keys (name -> gguf.GGUFValue) after all others; `lora` (a PEFT LoRA
    adapter folder) is merged into the base tensor by tensor in float32 before quantization (general.lora.*
    records it), so the file is the PEFT-merged model's."""
    started = time.perf_counter()
    target = _target(preset, tensor_types, target_size, target_bpw, max_bytes_per_token, types, plan_out)
    if sensitivity is not None and target is None:
        raise PlanError("--sensitivity weighs a plan's errors", "give --target-size or --target-bpw with it")
    chosen = None if target else preset if isinstance(preset, Preset) else load_preset(preset or DEFAULT_PRESET)
    overrides = parse_overrides(tensor_types)
    threads = threads or default_threads()
    if plan_out is not None and Path(plan_out).exists() and not force:
        raise OutputError(f"{plan_out}: already exists", "pass --force to overwrite it, or choose another --plan-out")
    hub = resolve_source(source, revision=revision)  # None for a local folder
    folder = hub.folder if hub else Path(source)
    plan = None
    with Checkpoint(folder) if lora is None else MergedSource.open(folder, Path(lora)) as ckpt:
        c = ckpt.config
        untied_head = LM_HEAD in ckpt.tensors and not lm_head_is_tied(ckpt.read_rows, ckpt.tensors)
        planned = plan_tensors(c, ckpt.tensors, keep_lm_head=untied_head)
        planned = keep_experts(planned, experts) if experts is not None else planned
        check_overrides(overrides, [t.name for t in planned])
        tied = not any(t.kind == T.OUTPUT for t in planned)
        importance = load_importance(imatrix, planned) if imatrix is not None else None
        kept = replace(c, n_experts=len(experts[0])) if experts is not None else c
        kv, tok_summary = build_metadata(
            ckpt.folder, kept, planned, file_type=FILE_TYPE_SLOT, name=name, repo_id=hub.repo_id if hub else None
        )
        if importance is not None:
            add_imatrix_keys(kv, importance, imatrix_label or str(imatrix))
        if isinstance(ckpt, MergedSource):
            kv.update(lora_metadata(ckpt.adapter))
        stem = name or (hub.name if hub else None)
        if lora is not None and name is None:  # my-base-my-adapter-Q4_K_M.gguf, not the base's own file name
            stem = f"{stem or folder.resolve().name}-{Path(lora).resolve().name}"
        path = output_path(
            ckpt.folder,
            target.name if target else cast(Preset, chosen),
            outfile=Path(outfile) if outfile else None,
            outdir=Path(outdir) if outdir else None,
            name=stem,
            imatrix=importance is not None,
        )
        option = "--outfile" if outfile else "--outdir"
        if target is not None:
            check_output(path, force, 0, option)  # before planning writes its measurements beside the file
            plan = make_plan(
                Model(
                    ckpt.folder,
                    planned,
                    c,
                    tied,
                    ckpt.read_rows,
                    sorted({r.file for r in ckpt.tensors.values()}),
                    importance,
                    imatrix_label or (str(imatrix) if imatrix else None),
                    lambda p: len(encode_header(_final_kv(kv, p, metadata), _f32_specs(planned))),
                    Path(sensitivity) if sensitivity is not None else None,
                ),
                target,
                types=types,
                max_bytes_per_token=max_bytes_per_token,
                cache=(path.parent, path.name.removesuffix(".gguf").removesuffix(f"-{target.name}")),
                threads=threads,
                progress=progress,
            )
            chosen = plan.preset
        assert chosen is not None
        specs = [
            TensorSpec(
                t.name,
                t.shape,
                chosen.tensor_type(
                    t,
                    n_layers=c.n_layers,
                    tied=tied,
                    n_experts=c.n_experts,
                    n_gqa=c.n_heads // c.n_kv_heads,
                    imatrix=importance is not None,
                    overrides=overrides,
                ),
            )
            for t in planned
        ]
        check_required(chosen, specs, importance)
        for q in {s.type for s in specs}:
            prepare(q)
        final_kv = _final_kv(kv, chosen, metadata)
        with GGUFStreamWriter(path, final_kv, specs, overwrite=force, option=option) as writer:
            _stream(ckpt, planned, specs, writer, threads, progress, importance)
            writer.commit()
    if plan is not None and plan_out is not None:
        write_text_atomic(Path(plan_out), render_toml(plan.preset, plan.header))
    return _result(path, chosen, specs, planned, started, tied, tok_summary, hub, imatrix_label or imatrix, lora, plan)


DEFAULT_PRESET = "q8_0"
FILE_TYPE_SLOT = gguf.LlamaFileType.ALL_F32  # general.file_type's place in the header; _final_kv sets its value


def _target(
    preset: object,
    tensor_types: Sequence[str],
    target_size: str | int | None,
    target_bpw: float | None,
    max_bytes_per_token: int | None,
    types: Sequence[str],
    plan_out: str | Path | None,
) -> Target | None:
    """The size or bits/weight target, after refusing options that contradict it or need it."""
    if target_size is None and target_bpw is None:
        if max_bytes_per_token is not None or types or plan_out is not None:
            raise PlanError("--max-bytes-per-token, --types and --plan-out go with --target-size or --target-bpw")
        return None
    if preset is not None:
        raise PlanError("give --preset or a target (--target-size, --target-bpw), not both")
    if tensor_types:
        raise PlanError("--tensor-type fixes types by hand: give it or a target, not both")
    if max_bytes_per_token is not None and max_bytes_per_token <= 0:
        raise PlanError(f"--max-bytes-per-token {max_bytes_per_token}: not a positive number of bytes")
    return parse_target(target_size, target_bpw)


def _final_kv(kv: Mapping[str, Any], preset: Preset, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The header's keys under `preset`: its file type, its quantize.plan.* keys (a plan's), then the caller's."""
    out = dict(kv)
    out[gguf.Keys.General.FILE_TYPE] = gguf.GGUFValue(int(preset.file_type), gguf.GGUFValueType.UINT32)
    out.update(plan_kv(preset.plan))
    return {**out, **(metadata or {})}


def _f32_specs(planned: Sequence[PlannedTensor]) -> list[TensorSpec]:
    """A tensor table of the right length: a type changes an entry's value, never its size."""
    return [TensorSpec(t.name, t.shape, gguf.GGMLQuantizationType.F32) for t in planned]


def _result(
    path: Path,
    chosen: Preset,
    specs: Sequence[TensorSpec],
    planned: list[PlannedTensor],
    started: float,
    tied: bool,
    tok_summary: dict,
    hub: Any,
    imatrix: str | Path | None,
    lora: str | Path | None,
    plan: Plan | None,
) -> ConvertResult:
    params = count_parameters(planned).total
    data_bytes = sum(s.n_bytes for s in specs)
    types: dict[str, int] = {}
    for s in specs:
        types[s.type.name] = types.get(s.type.name, 0) + 1
    return ConvertResult(
        path,
        chosen.id,
        chosen.file_type.name,
        path.stat().st_size,
        len(specs),
        params,
        8 * data_bytes / params,
        time.perf_counter() - started,
        tied,
        tok_summary,
        types,
        hub.repo_id if hub else None,
        hub.commit if hub else None,
        str(imatrix) if imatrix else None,
        str(lora) if lora is not None else None,
        plan.summary.as_dict() if plan is not None else None,
    )
