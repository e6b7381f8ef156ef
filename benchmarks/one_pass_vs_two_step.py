#!/usr/bin/env python3
"""One-pass Q4_K_M (marco-gguf) vs the two-step peer (BF16 GGUF, then llama_model_quantize).

Side by side in one run, alternating methods, on the same >= 2 GB BF16 checkpoint (Marco-Mini
widths, fewer layers). Each run is a fresh subprocess so peak RSS (VmHWM) is its own; peak extra
disk is sampled from the output folder. Both outputs are checked to be byte-identical.

    python benchmarks/one_pass_vs_two_step.py --workdir /tmp/bench --layers 2 --reps 3
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ONE_PASS = """
import json, sys, time
from marco_gguf import convert
t = time.perf_counter()
convert(sys.argv[1], preset=sys.argv[4], outfile=sys.argv[2], threads=int(sys.argv[3]), force=True)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""
TWO_STEP = """
import ctypes, json, os, sys, time
import llama_cpp
from marco_gguf import convert
t = time.perf_counter()
mid = sys.argv[2] + ".bf16.gguf"
convert(sys.argv[1], preset="bf16", outfile=mid, threads=int(sys.argv[3]), force=True)
p = llama_cpp.llama_model_quantize_default_params()
p.ftype, p.nthread = {"q4_k_m": 15, "q8_0": 7}[sys.argv[4]], int(sys.argv[3])  # LLAMA_FTYPE_MOSTLY_*
assert llama_cpp.llama_model_quantize(mid.encode(), sys.argv[2].encode(), ctypes.byref(p)) == 0
os.unlink(mid)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""
HWM = "\nprint(json.dumps({'hwm': next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM'))}))"


def tensor_digest(path: Path) -> str:
    """sha256 over (name, type, bytes) of every tensor in name order: llama-quantize reorders tensors."""
    from marco_gguf.gguf_io.reader import read_header

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for t in sorted(read_header(path).tensors, key=lambda t: t.name):
            f.seek(t.offset)
            h.update(f"{t.name}:{t.type.name}:".encode() + f.read(t.n_bytes))
    return h.hexdigest()


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def run(code: str, ckpt: Path, out: Path, threads: int, preset: str = "q4_k_m", keep: bool = False) -> dict:
    """One conversion in a fresh process: wall time, its own peak RSS, peak bytes in out's folder."""
    from marco_gguf.gguf_io.reader import read_header

    out.parent.mkdir(parents=True, exist_ok=True)
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                peak[0] = max(peak[0], folder_bytes(out.parent))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wall = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code + HWM, str(ckpt), str(out), str(threads), preset], capture_output=True, text=True
    )
    wall = time.perf_counter() - wall
    stop.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(proc.stderr)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    digest = tensor_digest(out)
    result = {
        "wall_s": wall,
        "peak_rss": lines[-1]["hwm"],
        "peak_disk": peak[0],
        "size": out.stat().st_size,
        "header_bytes": read_header(out).data_offset,
        "sha256": digest,
    }
    if not keep:
        shutil.rmtree(out.parent)
    return result


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    mem = next(
        int(line.split()[1]) // 2**20
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return f"{cpu}, {os.cpu_count()} cores, {mem} GiB RAM, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/marco-bench"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--results", type=Path, default=Path(__file__).with_name("one_pass_vs_two_step.md"))
    args = ap.parse_args()
    from marco_gguf import synthesize

    ckpt = args.workdir / "Marco-Mini-Synth"
    if not (ckpt / "config.json").exists():
        synthesize(ckpt, shape="mini", layers=args.layers, dtype="bf16", vocab="auto")
    src_bytes = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    runs: dict[str, list[dict]] = {"one pass": [], "two step": []}
    for rep in range(args.reps):
        for label, code in (("one pass", ONE_PASS), ("two step", TWO_STEP)):
            r = run(code, ckpt, args.workdir / f"out-{rep}" / "model-Q4_K_M.gguf", args.threads)
            runs[label].append(r)
            print(
                f"rep {rep} {label}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss'] / 2**20:.0f} MiB, "
                f"peak extra disk {r['peak_disk'] / 2**30:.2f} GiB",
                flush=True,
            )
    digests = {r["sha256"] for rs in runs.values() for r in rs}
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "peak_rss", "peak_disk", "size")}
        for k, v in runs.items()
    }
    ratio = med["one pass"]["wall_s"] / med["two step"]["wall_s"]
    table = [
        "# One-pass Q4_K_M vs BF16 GGUF + llama_model_quantize\n",
        f"Machine: {machine()}. Source: synthetic BF16 checkpoint with Marco-Mini widths, {args.layers} layers, "
        f"{src_bytes / 2**30:.2f} GiB of safetensors. {args.threads} threads, {args.reps} alternating repetitions "
        f"(medians). Tensors byte-identical across methods: {'yes' if len(digests) == 1 else 'NO'}.\n",
        "| method | wall time (s) | peak RSS (MiB) | peak extra disk (GiB) | output (GiB) |",
        "|---|---|---|---|---|",
        *(
            f"| {k} | {v['wall_s']:.1f} | {v['peak_rss'] / 2**20:.0f} | {v['peak_disk'] / 2**30:.2f} | "
            f"{v['size'] / 2**30:.2f} |"
            for k, v in med.items()
        ),
        f"\nOne pass / two step wall time: **{ratio:.2f}x**.\n",
        "Command: `python benchmarks/one_pass_vs_two_step.py " + " ".join(sys.argv[1:]) + "`\n",
    ]
    args.results.write_text("\n".join(table))
    print("\n".join(table))


if __name__ == "__main__":
    main()
