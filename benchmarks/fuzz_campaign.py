"""A long fuzz campaign: thousands of damaged checkpoints, counted by outcome.

    python benchmarks/fuzz_campaign.py checkpoint --cases 6000 [--json out.json]
    python benchmarks/fuzz_campaign.py gguf --cases 7000 [--json out.json]
    python benchmarks/fuzz_campaign.py imatrix --cases 13000 [--json out.json]

Checkpoint cases (tests/fuzzing.py): refused / harmless / crash / wrong / leftover per family.
GGUF cases (tests/gguf_fuzzing.py): refused by read_info / loaded and decoded by llama.cpp in a child
process / refused by llama.cpp / crash (a traceback, or the child killed by an abort). imatrix cases
(tests/imatrix_fuzzing.py, both formats): refused / accepted / invalid / untidy / crash. Seeds are printed
for every bad case so that it can be replayed. The goal is 0 crashes, 0 wrong files, 0 leftovers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from checkpoints import Spec, make_checkpoint  # noqa: E402

from marco_gguf import convert  # noqa: E402


def checkpoint_campaign(cases: int, work: Path) -> dict:
    from fuzzing import FAMILIES, run_case, tensor_digests

    good = make_checkpoint(work / "good" / "Marco-Fuzz-Instruct", Spec(), cache_dir=work / "vocab")[0]
    baseline = tensor_digests(convert(good, preset="q8_0", outdir=work, threads=1).path)
    counts: dict[str, Counter] = {f: Counter() for f in FAMILIES}
    bad = []
    for i in range(cases):
        family = FAMILIES[i % len(FAMILIES)]
        case = run_case(10_000_000 + i, family, good, baseline, work)
        counts[family][case.outcome] += 1
        if case.outcome not in ("refused", "harmless"):
            bad.append(
                {"seed": case.seed, "family": family, "outcome": case.outcome, "what": case.what, "detail": case.detail}
            )
            print(f"seed {case.seed} [{case.outcome}] {case.what}: {case.detail}", file=sys.stderr)
        shutil.rmtree(work / f"case-{case.seed}")
    return {"counts": {f: dict(c) for f, c in counts.items()}, "bad": bad}


def gguf_campaign(cases: int, work: Path) -> dict:
    from gguf_fuzzing import FAMILIES, Loader, run_case

    good_ckpt = make_checkpoint(work / "good" / "Marco-Fuzz-Instruct", Spec(), cache_dir=work / "vocab")[0]
    good = convert(good_ckpt, preset="q8_0", outdir=work, threads=1).path
    data, loader = good.read_bytes(), Loader()
    counts: dict[str, Counter] = {f: Counter() for f in FAMILIES}
    bad = []
    try:
        for i in range(cases):
            family = FAMILIES[i % len(FAMILIES)]
            case = run_case(20_000_000 + i, family, good, data, loader, work)
            counts[family][case.outcome] += 1
            if case.outcome not in ("refused", "loaded"):
                bad.append(
                    {
                        "seed": case.seed,
                        "family": family,
                        "outcome": case.outcome,
                        "what": case.what,
                        "detail": case.detail,
                    }
                )
                print(f"seed {case.seed} [{case.outcome}] {case.what}: {case.detail}", file=sys.stderr)
    finally:
        loader.close()
    return {"counts": {f: dict(c) for f, c in counts.items()}, "bad": bad}


def imatrix_campaign(cases: int, work: Path) -> dict:
    from imatrix_fuzzing import FAMILIES, dat_of, encode_gguf, run_case

    from marco_gguf.arch.qwen3moe import LM_HEAD, lm_head_is_tied, plan_tensors
    from marco_gguf.hf.checkpoint import Checkpoint
    from marco_gguf.quant.imatrix import compute_imatrix, read_text
    from marco_gguf.quant.imatrix_file import read_imatrix

    good_ckpt = make_checkpoint(work / "good" / "Marco-Fuzz-Instruct", Spec(dtype="f32"), cache_dir=work / "vocab")[0]
    model = convert(good_ckpt, preset="f32", outdir=work, threads=1).path
    (work / "calib.txt").write_text(read_text(None)[0][:6000], encoding="utf-8")
    made = compute_imatrix(model, text=work / "calib.txt", outfile=work / "made.imatrix.gguf", ctx=64, chunks=2)
    imatrix = read_imatrix(made.path)
    good_gguf = encode_gguf(work / "good.imatrix.gguf", imatrix)
    with Checkpoint(good_ckpt) as ckpt:
        untied = LM_HEAD in ckpt.tensors and not lm_head_is_tied(ckpt.read_rows, ckpt.tensors)
        planned = plan_tensors(ckpt.config, ckpt.tensors, keep_lm_head=untied)
    good = (imatrix, dat_of(imatrix, 64), good_gguf)
    counts: dict[str, Counter] = {f: Counter() for f in FAMILIES}
    bad = []
    for i in range(cases):
        family = FAMILIES[i % len(FAMILIES)]
        case = run_case(30_000_000 + i, family, good, planned, work)
        counts[family][case.outcome] += 1
        if case.outcome not in ("refused", "accepted"):
            bad.append(
                {"seed": case.seed, "family": family, "outcome": case.outcome, "what": case.what, "detail": case.detail}
            )
            print(f"seed {case.seed} [{case.outcome}] {case.what}: {case.detail}", file=sys.stderr)
    return {"counts": {f: dict(c) for f, c in counts.items()}, "bad": bad}


CAMPAIGNS = {"checkpoint": checkpoint_campaign, "gguf": gguf_campaign, "imatrix": imatrix_campaign}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=list(CAMPAIGNS))
    p.add_argument("--cases", type=int, default=5000)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="marco-fuzz-") as tmp:
        campaign = CAMPAIGNS[args.kind]
        result = {"kind": args.kind, "cases": args.cases, **campaign(args.cases, Path(tmp))}
    result["seconds"] = round(time.perf_counter() - started, 1)
    totals: Counter = Counter()
    for c in result["counts"].values():
        totals.update(c)
    result["totals"] = dict(totals)
    print(json.dumps(result["counts"], indent=1))
    print(f"{args.kind}: {args.cases} cases in {result['seconds']} s: {dict(totals)}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
