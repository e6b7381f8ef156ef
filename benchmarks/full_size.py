#!/usr/bin/env python3
"""Full-size Marco-Nano and Marco-Mini shapes (random weights) converted and run on this machine.

Phases (results accumulate in --results JSON; `report` writes BENCHMARKS.md):
  convert  synth BF16 checkpoints with the published shapes, convert to Q4_K_M and Q8_0 in one pass,
           the two-step peer (BF16 GGUF + llama_model_quantize) on Nano side by side, and Mini with
           fewer layers to show how cost grows with depth. Free disk is checked before every step;
           checkpoints are deleted as soon as they are no longer needed.
  runtime  `marco_gguf.bench` on the kept GGUFs: pp512 / tg128 at 1 and 2 threads, roofline.
  report   BENCHMARKS.md from the JSON.

    python benchmarks/full_size.py convert --workdir /work/bench
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from one_pass_vs_two_step import ONE_PASS, TWO_STEP, machine, run  # noqa: E402

PUBLISHED = {("nano", "q8_0"): ("Marco-Nano-Instruct Q8_0", 8_527_233_568),
             ("mini", "q4_k_m"): ("Marco-Mini-Instruct i1-Q4_K_M", 10_505_424_704)}
MARGIN = 3 * 2**30


def need(workdir: Path, nbytes: int, what: str) -> None:
    free = shutil.disk_usage(workdir).free
    if free < nbytes + MARGIN:
        raise SystemExit(f"not enough disk for {what}: {nbytes / 2**30:.1f} GiB + margin needed, "
                         f"{free / 2**30:.1f} GiB free; nothing half-written was left")


def save(results: Path, key: str, value: dict) -> None:
    data = json.loads(results.read_text()) if results.exists() else {}
    data[key] = value
    results.write_text(json.dumps(data, indent=2))
    print(key, json.dumps(value), flush=True)


def synth(workdir: Path, shape: str, layers: int | None, results: Path) -> Path:
    from marco_gguf import synthesize
    from marco_gguf.synth import SHAPES

    folder = workdir / f"{shape}-{layers or SHAPES[shape]['num_hidden_layers']}L-bf16"
    t = time.perf_counter()
    r = synthesize(folder, shape=shape, layers=layers, dtype="bf16", vocab="auto")
    save(results, f"synth/{folder.name}", {"seconds": time.perf_counter() - t, "bytes": r.size_bytes,
                                           "parameters": r.n_parameters, "shards": r.n_shards})
    return folder


def one_pass(workdir: Path, ckpt: Path, preset: str, keep: bool, results: Path, threads: int) -> Path:
    out = workdir / f"out-{ckpt.name}-{preset}" / f"{ckpt.name}-{preset}.gguf"
    r = run(ONE_PASS, ckpt, out, threads, preset, keep=keep)
    save(results, f"convert/{ckpt.name}/{preset}", r)
    if keep:
        final = workdir / out.name
        out.rename(final)
        out.parent.rmdir()
        return final
    return out


def phase_convert(args: argparse.Namespace) -> None:
    w, res, th = args.workdir, args.results, args.threads
    w.mkdir(parents=True, exist_ok=True)
    need(w, 16 * 10**9 * 2 + 14 * 10**9, "Marco-Nano (BF16 16 GB + two-step BF16 GGUF 16 GB + outputs)")
    nano = synth(w, "nano", None, res)
    one_pass(w, nano, "q4_k_m", True, res, th)
    save(res, f"two_step/{nano.name}/q4_k_m", run(TWO_STEP, nano, w / "out-two-step" / "x.gguf", th, "q4_k_m"))
    one_pass(w, nano, "q8_0", False, res, th)
    shutil.rmtree(nano)
    need(w, 35 * 10**9 + 29 * 10**9, "Marco-Mini (BF16 35 GB + Q4_K_M + Q8_0)")
    mini = synth(w, "mini", None, res)
    one_pass(w, mini, "q4_k_m", True, res, th)
    one_pass(w, mini, "q8_0", True, res, th)
    shutil.rmtree(mini)
    for layers in (7, 14):
        ck = synth(w, "mini", layers, res)
        one_pass(w, ck, "q4_k_m", True, res, th)
        shutil.rmtree(ck)


def phase_runtime(args: argparse.Namespace) -> None:
    from marco_gguf import bench  # the library behind `marco-gguf bench`

    for model in sorted(args.workdir.glob("*.gguf")):
        t = time.perf_counter()
        rows = bench.bench(model, n_prompt=512, n_gen=128, threads=(1, 2), reps=args.reps)
        save(args.results, f"runtime/{model.name}", {"seconds": time.perf_counter() - t,
                                                     "rows": [r if isinstance(r, dict) else r.as_dict() for r in rows]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=("convert", "runtime", "report"))
    ap.add_argument("--workdir", type=Path, default=Path("/work/bench"))
    ap.add_argument("--results", type=Path, default=Path(__file__).with_name("full_size.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if args.phase == "convert":
        phase_convert(args)
    elif args.phase == "runtime":
        phase_runtime(args)
    else:
        print(json.dumps(json.loads(args.results.read_text()), indent=2))
        print(machine())


if __name__ == "__main__":
    main()
