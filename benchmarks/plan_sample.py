"""How stable the planner's measured error is: the estimate's spread over sample seeds, per sample size.

    python benchmarks/plan_sample.py [--model DIR] [--imatrix FILE] [--sizes 256,1024,4096] [--seeds 5]

For a few tensors of the trained proxy (an expert stack, an attention matrix, the tied embeddings) and a few
candidate types, the imatrix-weighted error of measure_types.weighted_error is estimated on `size` sampled
rows with `--seeds` different seeds; the table gives the relative standard deviation (std / mean) of those
estimates, and how far apart two neighbouring types' errors are (the ratio the allocator has to resolve).
A sample size is stable enough when its spread is small against those ratios. Writes
benchmarks/plan_sample.json and benchmarks/plan_sample.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from gguf import MODEL_TENSOR as T
from gguf import GGMLQuantizationType as Q
from quality import machine

from marco_gguf.arch.qwen3moe import plan_tensors
from marco_gguf.hf.checkpoint import Checkpoint
from marco_gguf.quant.importance import load_importance
from marco_gguf.quant.measure_types import read_sample, sample_rows, tensor_weights, weighted_error

HERE = Path(__file__).parent
PROXY = Path.home() / ".cache" / "marco-gguf" / "proxy-v2" / "steps100"  # benchmarks/proxy.py --workdir
TENSORS = ("blk.10.ffn_down_exps.weight", "blk.10.attn_q.weight", "token_embd.weight")
TYPES = (Q.Q6_K, Q.Q4_K, Q.IQ3_S, Q.Q2_K)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=PROXY / "checkpoint")
    ap.add_argument("--imatrix", type=Path, default=PROXY / "quality" / "proxy.imatrix.gguf")
    ap.add_argument("--sizes", default="256,1024,4096")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    started = time.perf_counter()
    rows = []
    with Checkpoint(args.model) as ckpt:
        planned = plan_tensors(ckpt.config, ckpt.tensors, keep_lm_head=False)
        importance = load_importance(args.imatrix, planned)
        norm = next(t for t in planned if t.kind == T.OUTPUT_NORM).pieces[0]
        final_norm = ckpt.read_rows(norm.source, norm.start, norm.count).reshape(-1)
        for t in (next(p for p in planned if p.name == n) for n in TENSORS):
            w = tensor_weights(t, importance, experts_used=ckpt.config.n_experts_used, tied=True, final_norm=final_norm)
            for size in (int(s) for s in args.sizes.split(",")):
                samples = [read_sample(t, sample_rows(t, size, seed), ckpt.read_rows) for seed in range(args.seeds)]
                errors = {q.name: [weighted_error(q, s, w) for s in samples] for q in TYPES}
                rows.append(
                    {
                        "tensor": t.name,
                        "rows": t.n_rows,
                        "sample": len(samples[0].rows),
                        "rel_std": {q: statistics.stdev(e) / statistics.mean(e) for q, e in errors.items()},
                        "mean": {q: statistics.mean(e) for q, e in errors.items()},
                    }
                )
                print(rows[-1])
    lines = [
        "| tensor (rows) | sampled rows | "
        + " | ".join(f"{q.name} rel. std" for q in TYPES)
        + " | "
        + " | ".join(f"{a.name}/{b.name}" for a, b in zip(TYPES[1:], TYPES, strict=False))
        + " |",
        "|---|---|" + "---|" * (2 * len(TYPES) - 1),
    ]
    for r in rows:
        m = r["mean"]
        ratios = [m[a.name] / m[b.name] for a, b in zip(TYPES[1:], TYPES, strict=False)]
        lines.append(
            f"| {r['tensor']} ({r['rows']:,}) | {r['sample']:,} | "
            + " | ".join(f"{100 * r['rel_std'][q.name]:.2f} %" for q in TYPES)
            + " | "
            + " | ".join(f"{x:.2f}" for x in ratios)
            + " |"
        )
    doc = {"machine": machine(), "seeds": args.seeds, "seconds": time.perf_counter() - started, "rows": rows}
    (HERE / "plan_sample.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    (HERE / "plan_sample.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
