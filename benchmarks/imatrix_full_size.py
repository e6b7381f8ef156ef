#!/usr/bin/env python3
"""`marco-gguf imatrix` and `convert --calibrate` timed on full-size Marco shapes (random weights, `marco-gguf synth`).

For each shape: synth the BF16 checkpoint, convert it to Q8_0, run `marco-gguf imatrix` on that Q8_0 over the
built-in calibration text limited to --chunks chunks of 512 tokens, then `calibrate_convert` (what
`convert --calibrate --preset q4_k_m` runs: a temporary Q8_0, its imatrix, the i1-Q4_K_M) with the same chunk
limit, each in its own process. The default text has more chunks than a shared machine should spend on a
benchmark, so the full-text times are PROJECTED: measured fixed cost (load, conversion) + the text's chunks at
the measured tokens/s. Big files are deleted as soon as they are not needed.

    python benchmarks/imatrix_full_size.py run --workdir /work/bench-imatrix --chunks 4 --shapes nano
    python benchmarks/imatrix_full_size.py report     # -> benchmarks/imatrix_full_size.md (pasted in BENCHMARKS.md)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size import machine_facts, need, one_pass, save, synth

CTX = 512
SIZES = {
    "nano": (16 * 10**9, 8.6 * 10**9, 5.4 * 10**9),
    "mini": (34.5 * 10**9, 18.4 * 10**9, 10.6 * 10**9),
}  # BF16, Q8_0, Q4_K_M
CALIBRATE = """
import json, sys, time
from marco_gguf.calibrate import calibrate_convert
t = time.perf_counter()
r = calibrate_convert(sys.argv[1], preset="q4_k_m", outdir=sys.argv[2], chunks=int(sys.argv[3]), threads=int(sys.argv[4]))
print(json.dumps({"wall_s": time.perf_counter() - t, **r.as_dict()}, default=str))
"""


def timed(cmd: list[str]) -> dict:
    """Run cmd (it prints one JSON object), its wall time added."""
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {"wall_s": time.perf_counter() - t, **json.loads(out)}


def run_shape(w: Path, shape: str, res: Path, chunks: int, threads: int) -> None:
    bf16, q8_size, q4_size = SIZES[shape]
    need(w, int(bf16 + max(q8_size, q8_size + q4_size)), f"Marco-{shape} (BF16 + Q8_0 + Q4_K_M)")
    ckpt = synth(w, shape, None, res)
    q8 = one_pass(w, ckpt, "q8_0", True, res, threads)
    im = timed(
        [
            sys.executable,
            "-m",
            "marco_gguf",
            "imatrix",
            str(q8),
            "-o",
            str(w / f"{shape}.imatrix.gguf"),
            "--chunks",
            str(chunks),
            "-c",
            str(CTX),
            "-t",
            str(threads),
            "--json",
        ]
    )
    save(res, f"imatrix/{ckpt.name}", im)
    (w / f"{shape}.imatrix.gguf").unlink()
    q8.unlink()  # calibrate makes its own temporary Q8_0
    out = w / f"out-{shape}-calibrate"
    out.mkdir(exist_ok=True)
    cal = timed([sys.executable, "-c", CALIBRATE, str(ckpt), str(out), str(chunks), str(threads)])
    save(res, f"calibrate/{ckpt.name}", cal)
    shutil.rmtree(out)
    shutil.rmtree(ckpt)


def projection(im: dict, cal: dict) -> dict:
    """Full built-in text (n_tokens // CTX chunks) at the measured tokens/s, plus the measured fixed costs."""
    full_chunks = im["n_tokens"] // CTX
    per_chunk = CTX / im["tokens_per_s"]
    im_fixed = im["wall_s"] - im["chunks"] * per_chunk  # process start, model load, tokenizing, writing
    cal_fixed = cal["wall_s"] - cal["imatrix"]["chunks"] * CTX / cal["imatrix"]["tokens_per_s"]
    return {
        "full_chunks": full_chunks,
        "imatrix_s": im_fixed + full_chunks * per_chunk,
        "calibrate_s": cal_fixed + full_chunks * CTX / cal["imatrix"]["tokens_per_s"],
    }


def report(data: dict) -> str:
    m = data.get("machine", {})
    lines = [
        f"Machine: {m.get('machine', '?')}; {m.get('llama_cpp', '')}; run {m.get('date', '?')}; "
        f"{data.get('conditions', 'load during the run not recorded')}. Random-weight checkpoints of the published "
        "shapes, 2 threads, chunks of 512 tokens of the built-in calibration text.",
        "",
        "| model | step | chunks measured | tokens/s | wall (s) measured | projected wall (s), whole built-in text |",
        "|---|---|---|---|---|---|",
    ]
    for key, im in data.items():
        if not key.startswith("imatrix/"):
            continue
        name = key.split("/", 1)[1]
        cal = data[f"calibrate/{name}"]
        p = projection(im, cal)
        conv = data.get(f"convert/{name}/q8_0", {})
        lines += [
            f"| {name} | `imatrix` on its Q8_0 | {im['chunks']} | {im['tokens_per_s']:.1f} | {im['wall_s']:.0f} | "
            f"{p['imatrix_s']:.0f} ({p['full_chunks']} chunks, {im['n_tokens']:,} tokens) |",
            f"| {name} | `convert --calibrate --preset q4_k_m` (Q8_0 + imatrix + i1-Q4_K_M) | "
            f"{cal['imatrix']['chunks']} | {cal['imatrix']['tokens_per_s']:.1f} | {cal['wall_s']:.0f} | "
            f"{p['calibrate_s']:.0f} |",
        ]
        if conv:
            lines.append(f"| {name} | (for scale: plain Q8_0 conversion) | | | {conv['wall_s']:.0f} | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=("run", "report"))
    ap.add_argument("--workdir", type=Path, default=Path("/work/bench-imatrix"))
    ap.add_argument("--results", type=Path, default=Path(__file__).with_name("imatrix_full_size.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=4, help="chunks of 512 tokens per imatrix run (shared machine)")
    ap.add_argument("--shapes", default="nano", help="nano, mini or nano,mini")
    args = ap.parse_args()
    if args.phase == "run":
        args.workdir.mkdir(parents=True, exist_ok=True)
        save(args.results, "machine", machine_facts(args.workdir))
        for shape in args.shapes.split(","):
            run_shape(args.workdir, shape, args.results, args.chunks, args.threads)
    out = Path(__file__).with_name("imatrix_full_size.md")
    out.write_text(report(json.loads(args.results.read_text())))
    print(out.read_text())


if __name__ == "__main__":
    main()
