"""What the planner's measuring costs on full-size Marco-Mini, against one Q4_K_M conversion's quantizing.

    python benchmarks/plan_cost.py [--shape mini] [--reps 3] [--threads 1]

Measuring (quant/measure_types.py) quantizes and decodes SAMPLE_ROWS sampled rows of every quantizable tensor
with every candidate type (IQ types included: the costly case, with an imatrix); a conversion quantizes every
row once, with the preset's type. Both are timed here per type on Mini-shaped rows (random normal rows, an
importance vector of ones: the quantizers' cost does not depend on the values), with llama.cpp's own
quantizer and `to_float` through marco_gguf.llama.ggml; the tensor table (rows, row lengths, Q4_K_M's types)
comes from the architecture spec for Mini's published config, so the totals are for all 28 layers.
Reading is not counted on either side: a conversion reads the whole checkpoint (35 GB of BF16 for Mini),
measuring reads its sampled rows (under 1 % of it). Writes benchmarks/plan_cost.json and plan_cost.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from gguf import GGMLQuantizationType as Q
from quality import machine

from marco_gguf.arch.qwen3moe import plan_tensors
from marco_gguf.hf.checkpoint import load_config
from marco_gguf.llama.ggml import dequantize_rows, prepare, quantize_rows
from marco_gguf.quant.measure_types import CANDIDATES, SAMPLE_ROWS, fits, quantizable, sample_rows
from marco_gguf.quant.presets import load_preset
from marco_gguf.synth.model import marco_config, tensor_shapes

HERE = Path(__file__).parent
ROWS = 256  # rows per timing call


def spec_tensors(shape: str):
    """Mini's (or Nano's) GGUF tensors as the converter plans them, from the published config alone."""
    ids = SimpleNamespace(bos_token_id=151643, endoftext_id=151643)
    cfg = marco_config(shape, ids)  # type: ignore[arg-type]
    refs = {
        name: SimpleNamespace(name=name, file=Path("spec"), shape=s, n_rows=int(np.prod(s[:-1])) if len(s) > 1 else 1)
        for name, s in tensor_shapes(cfg)
    }
    with tempfile.TemporaryDirectory() as tmp:  # the converter's own config reader
        (Path(tmp) / "config.json").write_text(json.dumps(cfg))
        config = load_config(Path(tmp))
    return config, plan_tensors(config, refs, keep_lm_head=False)  # type: ignore[arg-type]


def seconds_per_row(q: Q, row_len: int, reps: int, decode: bool) -> float:
    """Median seconds to quantize (and, for measuring, decode) one row of `row_len` as `q`."""
    rows = np.random.default_rng(0).normal(size=(ROWS, row_len)).astype(np.float32)
    ones = np.ones(row_len, np.float32)
    prepare(q)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        data = quantize_rows(q, rows, ones)
        if decode:
            dequantize_rows(q, data, row_len)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / ROWS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="mini", choices=("mini", "nano"))
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    config, planned = spec_tensors(args.shape)
    preset = load_preset("q4_k_m")
    tensors = [t for t in planned if quantizable(t)]
    lengths = sorted({t.row_len for t in tensors})
    cost: dict[tuple[str, int], float] = {}  # quantize + decode, as measuring does
    enc: dict[tuple[str, int], float] = {}  # quantize only, as converting does
    for n in lengths:
        for q in CANDIDATES:
            if fits(q, n):
                cost[(q.name, n)] = seconds_per_row(q, n, args.reps, decode=True)
                enc[(q.name, n)] = seconds_per_row(q, n, args.reps, decode=False)
    convert_s = measure_s = 0.0
    for t in tensors:
        q = preset.tensor_type(t, n_layers=config.n_layers, tied=True, n_experts=config.n_experts)
        convert_s += t.n_rows * enc[(q.name, t.row_len)]
        sampled = len(sample_rows(t, SAMPLE_ROWS))
        measure_s += sampled * sum(cost[(c.name, t.row_len)] for c in CANDIDATES if (c.name, t.row_len) in cost)
    doc = {
        "machine": machine(),
        "shape": args.shape,
        "tensors": len(tensors),
        "seconds_per_row_quantize_decode": {f"{k[0]}@{k[1]}": v for k, v in cost.items()},
        "seconds_per_row_quantize": {f"{k[0]}@{k[1]}": v for k, v in enc.items()},
        "convert_quantize_seconds": convert_s,
        "measure_seconds": measure_s,
        "ratio": measure_s / convert_s,
    }
    (HERE / "plan_cost.json").write_text(json.dumps(doc, indent=1) + "\n")
    text = (
        f"Marco-{args.shape.capitalize()} ({len(tensors)} quantizable tensors, one thread): quantizing a Q4_K_M "
        f"conversion {convert_s:,.0f} s; measuring every candidate type on {SAMPLE_ROWS} sampled rows per tensor "
        f"(quantize + decode) {measure_s:,.0f} s: {measure_s / convert_s:.2f} of a conversion's quantizing.\n"
    )
    (HERE / "plan_cost.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
