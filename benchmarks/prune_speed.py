"""Speed of pruned Marco-Mini Q4_K_M (random weights, Mini's widths at reduced depth) at 256 / 192 / 128 / 96 experts.

    python benchmarks/prune_speed.py [--workdir DIR] [--layers 7] [--reps 3] [--threads 2]
    python benchmarks/prune_speed.py --model Marco-Mini-Synth-Q4_K_M.gguf   # full size, made beforehand

Synthesizes a Mini-shaped BF16 checkpoint with `--layers` layers (the full 28 need 34.5 GB of disk for
the checkpoint alone) and converts it to Q4_K_M, or takes `--model` (a Q4_K_M GGUF of Mini's shapes,
`marco-gguf synth mini` then `convert --preset q4_k_m`; left in place), measures expert usage on a slice of the built-in text,
prunes the GGUF to each N and runs `marco_gguf.measure.bench.bench` (pp512, tg128, `--reps` repetitions after a
warm-up) on every file in one run, so the ratios against the unpruned file are side by side. Speed does
not depend on the weights' values, only on shapes, types and which experts are routed to. Everything is
deleted afterwards. Writes benchmarks/prune_speed.json and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from quality import machine
from serve import read_through

from marco_gguf import convert, synthesize
from marco_gguf.experts.prune import prune
from marco_gguf.experts.usage import expert_usage
from marco_gguf.gguf_io.info import read_info
from marco_gguf.measure.bench import bench
from marco_gguf.quant.imatrix import read_text

HERE = Path(__file__).parent
KEEP = (256, 192, 128, 96)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--layers", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None, help="a Mini-shaped Q4_K_M GGUF instead of synthesizing")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="marco-prune-speed-", dir=args.workdir))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still deletes the files (finally)
    try:
        if args.model:
            whole, args.layers = args.model, read_info(args.model).hparams["block_count"]
        else:
            ckpt = synthesize(work / "mini", shape="mini", layers=args.layers).path
            whole = convert(ckpt, preset="q4_k_m", outdir=work, threads=args.threads).path
            shutil.rmtree(ckpt)
        text, _ = read_text(None)
        (work / "usage.txt").write_text(text[:12000], encoding="utf-8")
        expert_usage(whole, [work / "usage.txt"], threads=args.threads, usage=work / "usage.json")
        files = {256: whole} | {
            n: prune(whole, keep=n, usage=work / "usage.json", outfile=work / f"p{n}.gguf").path
            for n in KEEP
            if n != 256
        }
        results = {}
        for n, path in files.items():
            print(f"bench {n} experts", file=sys.stderr, flush=True)
            read_through(path)  # from the page cache, as a file used every day is; the files fit one at a time
            results[n] = bench(path, threads=args.threads, reps=args.reps).as_dict()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc = {"machine": machine(), "layers": args.layers, "threads": args.threads, "reps": args.reps, "results": results}
    (HERE / "prune_speed.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(table(doc))


def table(doc: dict) -> str:
    res = doc["results"]
    speed = {n: {r["test"]: r for r in res[n]["rows"]} for n in res}
    base = speed[256]
    lines = [
        "| experts kept | file size (bytes) | pp512 t/s | vs 256 | tg128 t/s | vs 256 |",
        "|---|---|---|---|---|---|",
    ]
    for n in res:
        pp, tg = speed[n]["pp512"], speed[n]["tg128"]
        lines.append(
            f"| {n} | {res[n]['size_bytes']:,} | {pp['tokens_per_s']:.1f} ± {pp['spread']:.1f} | "
            f"{pp['tokens_per_s'] / base['pp512']['tokens_per_s']:.2f} | {tg['tokens_per_s']:.1f} ± "
            f"{tg['spread']:.1f} | {tg['tokens_per_s'] / base['tg128']['tokens_per_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
