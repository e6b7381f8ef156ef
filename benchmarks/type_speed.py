"""Prompt and generation speed of each type a plan may choose, on full-size Marco-Mini shapes (random weights).

    python benchmarks/type_speed.py --workdir /work/bench [--layers 2] [--reps 3]   # ~45 min at 2 layers

Marco-Mini's widths exactly (hidden 2048, 256 experts of 768, 8 per token, 151,936 tokens of vocabulary), with
`--layers` layers so that a file per type fits this machine's disk; every tensor a plan chooses a type for
(the expert stacks, attention, the tied embeddings serving as the output) is made the one type, so the row is
what a token costs when the plan gives that type to everything. Per type: `convert` with a one-line preset,
then `marco-gguf bench` (pp512 and tg128 at 2 threads, median of --reps after a warm-up), then the file is
deleted. The IQ types llama.cpp makes only with an importance matrix (the output then at Q4_K) get one from `marco-gguf imatrix` over
2 chunks of the built-in text on the Q8_0 (random weights: the speed, not the quality, is measured).
Writes benchmarks/type_speed.json and type_speed.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from gguf import GGMLQuantizationType as Q
from quality import machine

from marco_gguf import convert
from marco_gguf.measure.bench import bench
from marco_gguf.quant.imatrix import compute_imatrix
from marco_gguf.quant.measure_types import CANDIDATES
from marco_gguf.quant.presets import NEEDS_IMATRIX, parse_preset
from marco_gguf.synth.model import synthesize

HERE = Path(__file__).parent


def one_type_preset(q: str, needs_imatrix: bool):
    """Every tensor at `q`; for the types that need importance data, the tied output at Q4_K (no imatrix has it)."""
    rules = [{"tensors": ["token_embd"], "type": "Q4_K"}] if needs_imatrix else []
    data = {"name": f"ALL_{q}", "file_type": "MOSTLY_Q8_0", "default_type": q, "rules": rules}
    return parse_preset(data, f"all-{q}", "type_speed")


def run(args: argparse.Namespace) -> list[dict]:
    work: Path = args.workdir
    ckpt = work / f"mini-{args.layers}l"
    if not (ckpt / "config.json").exists():
        synthesize(ckpt, shape="mini", layers=args.layers, dtype="bf16")
    imatrix = None
    rows = []
    for q in [q.name for q in CANDIDATES]:
        if shutil.disk_usage(work).free < 8e9:
            raise SystemExit(f"{work}: less than 8 GB free")
        started = time.perf_counter()
        needs = Q[q] in NEEDS_IMATRIX
        if needs and imatrix is None:
            q8 = convert(ckpt, preset="q8_0", outdir=work / "q8", threads=2, force=True).path
            imatrix = compute_imatrix(q8, outfile=work / "mini.imatrix.gguf", chunks=2, threads=2, force=True).path
            q8.unlink()
        r = convert(
            ckpt,
            preset=one_type_preset(q, needs),
            outdir=work / "types",
            threads=2,
            force=True,
            imatrix=imatrix if needs else None,
        )
        converted = time.perf_counter() - started
        b = bench(r.path, threads=2, reps=args.reps).as_dict()
        tests = {row["test"]: statistics.median(row["samples"]) for row in b["rows"]}
        rows.append(
            {
                "type": q,
                "size_bytes": b["size_bytes"],
                "bits_per_weight": b["bits_per_weight"],
                "bytes_per_token": b["bytes_per_token"],
                "pp512": tests["pp512"],
                "tg128": tests["tg128"],
                "samples": {row["test"]: row["samples"] for row in b["rows"]},
                "convert_seconds": converted,
            }
        )
        print(f"{q}: pp512 {tests['pp512']:.1f} tg128 {tests['tg128']:.2f} t/s", file=sys.stderr, flush=True)
        r.path.unlink()
    return rows


def table(rows: list[dict], layers: int) -> str:
    base = next(r for r in rows if r["type"] == "Q4_K")
    lines = [
        f"| type (every tensor; Mini's widths, {layers} layers) | bits/weight | bytes/token | pp512 t/s | tg128 t/s "
        "| pp512 / Q4_K | tg128 / Q4_K |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['type']} | {r['bits_per_weight']:.2f} | {r['bytes_per_token']:,} | {r['pp512']:.1f} | {r['tg128']:.2f} "
            f"| {r['pp512'] / base['pp512']:.2f} | {r['tg128'] / base['tg128']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    started = time.perf_counter()
    rows = run(args)
    doc = {"layers": args.layers, "reps": args.reps, "seconds": time.perf_counter() - started, "machine": machine()}
    (HERE / "type_speed.json").write_text(json.dumps({**doc, "rows": rows}, indent=1) + "\n")
    (HERE / "type_speed.md").write_text(table(rows, args.layers))
    print(table(rows, args.layers))


if __name__ == "__main__":
    main()
