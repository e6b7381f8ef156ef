"""`prune --format hf`: a pruned Hugging Face checkpoint, to fine-tune after pruning.

The kept experts are renumbered 0..N-1 in their order; tensors are copied byte for byte in their own dtype
(per-expert keys renamed, fused stacks and router rows sliced) into one `model.safetensors`; config.json
gets the expert count N (in whichever spelling it used) and a `marco_prune` record; every other file
(tokenizer, generation config, templates, card, license) is copied. The folder is built hidden beside the
target and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from marco_gguf.base.errors import OutputError
from marco_gguf.experts.identity import ModelIdentity
from marco_gguf.hf.checkpoint import INDEX_NAME, Checkpoint
from marco_gguf.hf.safetensors_format import TensorRef, encode_header

PER_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(.+)$")
STACKED = re.compile(r"model\.layers\.(\d+)\.mlp\.(gate\.weight|experts\.gate_up_proj|experts\.down_proj)$")
COPY_BLOCK = 8 << 20


def _ranges(ref: TensorRef, rows: list[int] | None, n_experts: int) -> Iterator[tuple[int, int]]:
    """(offset, length) byte ranges of the tensor, or of its `rows` along the first axis."""
    if rows is None:
        for start in range(0, ref.n_bytes, COPY_BLOCK):
            yield ref.offset + start, min(COPY_BLOCK, ref.n_bytes - start)
        return
    per = ref.n_bytes // n_experts
    for e in rows:
        yield ref.offset + e * per, per


def plan(
    tensors: dict[str, TensorRef], kept: list[list[int]], n_experts: int
) -> list[tuple[str, TensorRef, list[int] | None]]:
    """(new name, source, rows kept along the first axis or None) for every tensor of the pruned checkpoint."""
    out: list[tuple[str, TensorRef, list[int] | None]] = []
    for name in sorted(tensors):
        ref = tensors[name]
        if m := PER_EXPERT.match(name):
            layer, e = int(m[1]), int(m[2])
            if e in kept[layer]:
                out.append((f"model.layers.{layer}.mlp.experts.{kept[layer].index(e)}.{m[3]}", ref, None))
        elif m := STACKED.match(name):
            out.append((name, ref, kept[int(m[1])]))
        else:
            out.append((name, ref, None))
    return out


def _write_weights(ckpt: Checkpoint, entries: list, n_experts: int, path: Path) -> None:
    head = encode_header(
        [
            (name, ref.dtype, (len(rows), *ref.shape[1:]) if rows is not None else ref.shape)
            for name, ref, rows in entries
        ]
    )
    fds: dict[Path, int] = {}
    with open(path, "wb") as f:
        f.write(head)
        for _, ref, rows in entries:
            fd = fds.setdefault(ref.file, os.open(ref.file, os.O_RDONLY))
            for start, length in _ranges(ref, rows, n_experts):
                f.write(os.pread(fd, length, start))
    for fd in fds.values():
        os.close(fd)


def prune_checkpoint(
    source: Path,
    kept: list[list[int]],
    method: str,
    identity: ModelIdentity,
    out: Path,
    *,
    force: bool,
) -> Path:
    """Write the pruned checkpoint folder `out`; returns its path."""
    if out.exists() and not force:
        raise OutputError(f"{out}: already exists", "pass --force to overwrite it, or choose -o")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent}: output folder does not exist", "create it first")
    with Checkpoint(source) as ckpt, tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        needed = sum(r.n_bytes for r in ckpt.tensors.values())
        if shutil.disk_usage(out.parent).free < needed:
            raise OutputError(
                f"{out}: not enough disk space (up to {needed:,} bytes needed)", "free space or choose -o"
            )
        build = Path(tmp) / "checkpoint"
        build.mkdir()
        _write_weights(ckpt, plan(ckpt.tensors, kept, identity.experts), identity.experts, build / "model.safetensors")
        _write_config(source / "config.json", build / "config.json", kept, method, identity)
        for f in sorted(source.iterdir()):
            if f.is_file() and f.name not in ("config.json", INDEX_NAME) and f.suffix != ".safetensors":
                shutil.copyfile(f, build / f.name)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.rename(build, out)
    return out


def _write_config(src: Path, dst: Path, kept: list[list[int]], method: str, identity: ModelIdentity) -> None:
    config = json.loads(src.read_text(encoding="utf-8"))
    target = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    key = "num_local_experts" if "num_local_experts" in target else "num_experts"
    target[key] = len(kept[0])
    config["marco_prune"] = {
        "method": method,
        "source_expert_count": identity.experts,
        "source_router_sha256": identity.router_sha256,
        "kept_experts": kept,
    }
    dst.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
