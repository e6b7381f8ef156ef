"""What `--sensitivity` costs on full-size Marco-Mini, against one Q4_K_M conversion of the same checkpoint.

    python benchmarks/sensitivity_cost.py --workdir /work/bench [--tensors 6]   # ~60 GB free disk, ~30 min

A BF16 checkpoint with Mini's published shapes and random weights (`synthesize`; the cost of a llama.cpp pass
does not depend on the values) is converted to Q4_K_M (timed, then deleted: the tool a user runs instead) and to
Q8_0 (the GGUF the gains are measured on); the checkpoint is deleted before measuring, so the peak disk is the
checkpoint and one output. Then quant/sensitivity.measure_gains runs on the Q8_0 for `--tensors` tensors spread
over kinds and depth (the tied embedding's lookup among them), timed from its progress events: the time to
the first tensor's gain (model load, tokenising, the clean pass, that tensor's pass), then each pass. The
total for all 197 quantizable tensors is that first time plus 196 x the median later pass. Writes benchmarks/sensitivity_cost.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from plan_cost import spec_tensors
from quality import machine

from marco_gguf import convert, synthesize
from marco_gguf.base.progress import ProgressEvent
from marco_gguf.quant.measure_types import quantizable
from marco_gguf.quant.sensitivity import REFERENCE, measure_gains

HERE = Path(__file__).parent
SPREAD = (  # kinds and depths: the lookup, attention early and late, each expert stack, the output side
    "token_embd.weight",
    "blk.0.attn_q.weight",
    "blk.13.ffn_gate_exps.weight",
    "blk.13.ffn_up_exps.weight",
    "blk.27.ffn_down_exps.weight",
    "blk.27.attn_output.weight",
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed_convert(ckpt: Path, preset: str, out: Path) -> tuple[Path, float]:
    t0 = time.perf_counter()
    path = convert(ckpt, preset=preset, outfile=out, threads=2, force=True).path
    seconds = time.perf_counter() - t0
    log(f"convert {preset}: {seconds:.0f} s")
    return path, seconds


def gains_timed(q8: Path, names: list[str]) -> tuple[float, list[float]]:
    """measure_gains on `names`: the seconds until its first tensor was done (model load, tokenising, the clean
    pass and that tensor's pass), and each later tensor's pass."""
    stamps: list[float] = []
    energy = {n: (REFERENCE[0], 1e-3) for n in names}  # any energy: the cost does not depend on it
    t0 = time.perf_counter()

    def progress(e: ProgressEvent) -> None:
        stamps.append(time.perf_counter())
        log(f"{e.what}: {stamps[-1] - (stamps[-2] if len(stamps) > 1 else t0):.1f} s")

    measure_gains(q8, energy, threads=2, progress=progress)
    return stamps[0] - t0, [b - a for a, b in itertools.pairwise(stamps)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/work/bench"))
    ap.add_argument("--tensors", type=int, default=len(SPREAD))
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    _, planned = spec_tensors("mini")
    total = sum(1 for t in planned if quantizable(t))
    ckpt = work / "mini-28L-bf16"
    t0 = time.perf_counter()
    if not (ckpt / "config.json").is_file():
        synthesize(ckpt, shape="mini", dtype="bf16", vocab="auto")
    log(f"synthesized in {time.perf_counter() - t0:.0f} s")
    q4, q4_seconds = timed_convert(ckpt, "q4_k_m", work / "mini-Q4_K_M.gguf")
    q4_size = q4.stat().st_size
    q4.unlink()
    q8, q8_seconds = timed_convert(ckpt, "q8_0", work / "mini-Q8_0.gguf")
    shutil.rmtree(ckpt)
    first, passes = gains_timed(q8, list(SPREAD[: args.tensors]))
    per_pass = statistics.median(passes)
    estimate = first + (total - 1) * per_pass
    doc = {
        "machine": machine(),
        "tensors_timed": list(SPREAD[: args.tensors]),
        "quantizable_tensors": total,
        "q4_k_m_convert_s": q4_seconds,
        "q4_k_m_size": q4_size,
        "q8_0_convert_s": q8_seconds,
        "q8_0_size": q8.stat().st_size,
        "until_first_tensor_s": first,
        "pass_s": passes,
        "pass_median_s": per_pass,
        "estimate_s": estimate,
        "estimate_over_q4_k_m": estimate / q4_seconds,
    }
    (HERE / "sensitivity_cost.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = (
        f"Marco-Mini ({total} quantizable tensors, 2 threads): one Q4_K_M conversion {q4_seconds:,.0f} s; "
        f"`--sensitivity` on the Q8_0: {first:,.0f} s until the first tensor's gain (loading, the clean pass and "
        f"its pass), then one 512-token pass {per_pass:.1f} s (median of {len(passes)} tensors), so {estimate:,.0f} s "
        f"for all {total} tensors: {estimate / q4_seconds:.2f} Q4_K_M conversions.\n"
    )
    (HERE / "sensitivity_cost.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
