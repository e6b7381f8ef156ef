"""Prompt and generation speed of each type a plan may choose, on full-size Marco-Mini shapes (random weights).

    python benchmarks/type_speed.py --workdir /work/bench [--reps 2]   # ~30 min

Marco-Mini's widths exactly (hidden 2048, 256 experts of 768, 8 per token, 151,936 tokens of vocabulary), two
layers so that a file per type fits this machine's disk and the run its time. In each file every layer tensor
(the expert stacks and attention) is the one type and the tied embeddings serving as the output stay Q8_0;
per type: `convert` with a one-line preset, `bench` (pp512 and tg128 at 2 threads, median of --reps after a
warm-up), then the file is deleted. A one-layer all-Q8_0 file gives what the output and embeddings cost, so
each type's cost per layer follows: (ms per token of the 2-layer file - the output's) / 2, and Marco-Mini's
tokens/s with all 28 layers at that type is estimated from it. The IQ types llama.cpp makes only with an
importance matrix get one from `marco-gguf imatrix` over 2 chunks of the built-in text on the Q8_0 (random
weights: the speed, not the quality, is measured). Writes benchmarks/type_speed.json and type_speed.md.
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


MINI_LAYERS = 28  # Marco-Mini's depth (arch/qwen3moe.py's published shape, as synth makes it)


def one_type_preset(q: str):
    """Every layer tensor at `q`, the tied embeddings (the output) at Q8_0."""
    rules = [{"tensors": ["token_embd"], "type": "Q8_0"}]
    data = {"name": f"LAYERS_{q}", "file_type": "MOSTLY_Q8_0", "default_type": q, "rules": rules}
    return parse_preset(data, f"layers-{q}", "type_speed")


def speed(path: Path, reps: int) -> dict[str, float]:
    """Median tokens/s of pp512 and tg128 at 2 threads."""
    b = bench(path, threads=2, reps=reps).as_dict()
    return {row["test"]: statistics.median(row["samples"]) for row in b["rows"]} | {
        "bytes_per_token": b["bytes_per_token"],
        "bits_per_weight": b["bits_per_weight"],
    }


def checkpoint(work: Path, layers: int) -> Path:
    folder = work / f"mini-{layers}l"
    if not (folder / "config.json").exists():
        synthesize(folder, shape="mini", layers=layers, dtype="bf16")
    return folder


def run(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    work: Path = args.workdir
    one = convert(checkpoint(work, 1), preset="q8_0", outdir=work / "one", threads=2, force=True).path
    output = speed(one, args.reps)  # the output and embeddings' cost, with one Q8_0 layer
    one.unlink()
    ckpt, imatrix, rows = checkpoint(work, 2), None, []
    for q in [q.name for q in CANDIDATES]:
        if shutil.disk_usage(work).free < 8e9:
            raise SystemExit(f"{work}: less than 8 GB free")
        started, needs = time.perf_counter(), Q[q] in NEEDS_IMATRIX
        if needs and imatrix is None:
            q8 = convert(ckpt, preset="q8_0", outdir=work / "q8", threads=2, force=True).path
            imatrix = compute_imatrix(q8, outfile=work / "mini.imatrix.gguf", chunks=2, threads=2, force=True).path
            q8.unlink()
        r = convert(ckpt, preset=one_type_preset(q), outdir=work / "types", threads=2, force=True, imatrix=imatrix)
        converted = time.perf_counter() - started
        rows.append({"type": q, **speed(r.path, args.reps), "size_bytes": r.path.stat().st_size})
        rows[-1]["convert_seconds"] = converted
        print(f"{q}: pp512 {rows[-1]['pp512']:.1f} tg128 {rows[-1]['tg128']:.2f} t/s", file=sys.stderr, flush=True)
        r.path.unlink()
    return output, rows


def per_layer_ms(row: dict, output: dict, q8: dict, test: str) -> float:
    """ms per token one layer at this type costs: the 2-layer file's minus the output's, halved. The output's
    cost is the one-layer Q8_0 file's minus one Q8_0 layer (the 2-layer Q8_0 file's minus the one-layer's)."""
    out_ms = 2 * 1000 / output[test] - 1000 / q8[test]
    return (1000 / row[test] - out_ms) / 2


def table(output: dict, rows: list[dict]) -> str:
    q8, q4 = (next(r for r in rows if r["type"] == t) for t in ("Q8_0", "Q4_K"))
    lines = [
        "| type (every layer tensor) | bits/weight (file) | pp512 t/s | tg128 t/s | ms/token a layer: pp | tg "
        "| a layer vs Q4_K: pp | tg | Marco-Mini est. tg128 t/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    out_tg = 2 * 1000 / output["tg128"] - 1000 / q8["tg128"]
    for r in rows:
        pp, tg = (per_layer_ms(r, output, q8, t) for t in ("pp512", "tg128"))
        pp4, tg4 = (per_layer_ms(q4, output, q8, t) for t in ("pp512", "tg128"))
        lines.append(
            f"| {r['type']} | {r['bits_per_weight']:.2f} | {r['pp512']:.1f} | {r['tg128']:.2f} | {pp:.3f} | {tg:.2f} "
            f"| {pp / pp4:.2f} | {tg / tg4:.2f} | {1000 / (out_tg + MINI_LAYERS * tg):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    started = time.perf_counter()
    output, rows = run(args)
    doc = {"reps": args.reps, "seconds": time.perf_counter() - started, "machine": machine(), "one_layer_q8_0": output}
    (HERE / "type_speed.json").write_text(json.dumps({**doc, "rows": rows}, indent=1) + "\n")
    (HERE / "type_speed.md").write_text(table(output, rows))
    print(table(output, rows))


if __name__ == "__main__":
    main()
