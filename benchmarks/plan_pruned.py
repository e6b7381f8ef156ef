"""A tight budget: pruned experts with a larger plan against all experts with a smaller plan, at the same size.

    python benchmarks/proxy.py --workdir W                  # first: the proxy (W/checkpoint, W/proxy-F32.gguf)
    python benchmarks/plan_pruned.py --workdir W [--keep 6] [--at q2_k,q3_k_m] [--chunks 8]

On the proxy (benchmarks/proxy.py, 8 experts, 2 per token). Both sides are planned as a user plans them now,
with the imatrix and `--sensitivity` (each model's own Q8_0; quant/sensitivity.py):
- all experts: `convert --target-size` at the size of each `--at` preset's imatrix file.
- pruned: expert usage is measured with `expert_usage` on the Q8_0 over the first 40 % of the held-out
  eval.txt (code, as prune_quality.py does); `prune --keep K --method reap --format hf` writes the pruned
  checkpoint, the imatrix is sliced alike (`slice_imatrix`, as `prune --imatrix` does), its Q8_0 is made for
  its gains, and `convert --target-size` plans it at the same size.
The Q8_0, the imatrix and the preset files are proxy_quality.py's (W/quality), made here the same way when
missing. Scored in one `quality` run against the F32 proxy on the last 60 % of eval.txt (code no usage run
saw): the preset of that size, the best fixed preset no larger (by proxy_quality.json's ranking), and the two
plans. Writes benchmarks/plan_pruned.json and plan_pruned.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from proxy_quality import marco_view, row_cells
from prune_quality import texts
from quality import _convert, machine, make_imatrix

from marco_gguf import convert
from marco_gguf.experts.prune import prune, slice_imatrix
from marco_gguf.experts.usage import expert_usage
from marco_gguf.gguf_io.info import read_info
from marco_gguf.measure.quality import quality
from marco_gguf.quant.imatrix_file import read_imatrix, write_imatrix

HERE = Path(__file__).parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def base_files(work: Path) -> tuple[Path, Path]:
    """The proxy's Q8_0 and imatrix, as proxy_quality.py makes them (reused when already there)."""
    q8 = _convert(
        work / "checkpoint", str(marco_view("q8_0", work / "quality" / "presets")), work / "quality" / "marco", None
    )
    assert q8 is not None
    im = work / "quality" / "proxy.imatrix.gguf"
    if not im.is_file():
        make_imatrix(q8, None, im, 512, 2)
    return q8, im


def best_preset(size: int) -> str:
    """The fixed preset (Marco's view, imatrix) of lowest mean KLD no larger than `size`, by proxy_quality.json."""
    rows = json.loads((HERE / "proxy_quality.json").read_text())["rows"]
    fits = [r for r in rows if r["series"] == "preset" and r["imatrix"] and r["quality"]["size_bytes"] <= size]
    return min(fits, key=lambda r: r["quality"]["kld"]["value"])["label"]


def pruned_model(
    work: Path, out: Path, keep: int, usage_text: Path, imatrix: Path, q8: Path
) -> tuple[Path, Path, Path]:
    """The REAP-pruned checkpoint, its sliced imatrix and its Q8_0 (made once, reused)."""
    folder, sliced = out / f"pruned-{keep}", out / f"pruned-{keep}.imatrix.gguf"
    if not (folder.is_dir() and sliced.is_file()):
        usage = out / "code.usage.json"
        if not usage.is_file():
            expert_usage(q8, [usage_text], labels=["code"], threads=2, usage=usage)
        r = prune(work / "checkpoint", keep=keep, usage=usage, method="reap", format="hf", outfile=folder, force=True)
        write_imatrix(slice_imatrix(read_imatrix(imatrix), r.kept, r.experts_before), sliced)
    pruned_q8 = _convert(folder, "q8_0", out, None)
    assert pruned_q8 is not None
    return folder, sliced, pruned_q8


def planned(model: Path, size: int, out: Path, imatrix: Path, q8: Path) -> tuple[Path, dict]:
    """`convert --target-size SIZE --imatrix IM --sensitivity Q8` (the gains measured once per model, then read)."""
    t0 = time.perf_counter()
    r = convert(model, target_size=size, outdir=out, threads=2, imatrix=imatrix, sensitivity=q8, force=True)
    assert r.plan is not None
    log(f"{r.path.name}: {r.plan['types']} in {time.perf_counter() - t0:.0f} s")
    return r.path, r.plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "marco-gguf" / "proxy-v2")
    ap.add_argument("--keep", type=int, default=6)
    ap.add_argument("--at", default="q2_k,q3_k_m", help="presets whose imatrix file sizes are the budgets")
    ap.add_argument("--chunks", type=int, default=8)
    args = ap.parse_args()
    started, work = time.perf_counter(), args.workdir
    out = work / "pruned"
    (out / "all").mkdir(parents=True, exist_ok=True)
    split = texts(work / "eval.txt", out)  # prune_quality.py's split: usage on 40 %, scoring on the rest
    q8, imatrix = base_files(work)
    folder, sliced, pruned_q8 = pruned_model(work, out, args.keep, split["code"], imatrix, q8)
    rows = []
    for p in args.at.split(","):
        preset_file = _convert(
            work / "checkpoint", str(marco_view(p, work / "quality" / "presets")), work / "quality" / "marco", imatrix
        )
        assert preset_file is not None
        size = preset_file.stat().st_size
        best = best_preset(size)
        best_file = _convert(
            work / "checkpoint",
            str(marco_view(best, work / "quality" / "presets")),
            work / "quality" / "marco",
            imatrix,
        )
        full, full_plan = planned(work / "checkpoint", size, out / "all", imatrix, q8)
        pruned, pruned_plan = planned(folder, size, out, sliced, pruned_q8)
        rows += [{"label": f"{p.upper()} (all 8 experts)", "path": preset_file}]
        rows += [{"label": f"{best.upper()}, the best fixed preset no larger", "path": best_file}] if best != p else []
        rows += [
            {"label": f"plan at {p.upper()}'s size, all 8 experts", "path": full, "plan": full_plan},
            {
                "label": f"plan at {p.upper()}'s size, {args.keep} of 8 experts (REAP)",
                "path": pruned,
                "plan": pruned_plan,
            },
        ]
    report = quality(
        [r["path"] for r in rows], ref=work / "proxy-F32.gguf", text=split["score"], chunks=args.chunks, threads=2
    ).as_dict()
    for r, q in zip(rows, report["results"], strict=True):
        r |= {"quality": q, "bytes_per_token": read_info(r["path"]).bytes_per_token, "path": str(r["path"])}
    head = "| file (all with the imatrix) | size (bytes) | bits/weight | bytes/token | PPL | mean KLD | 99 % KLD | same top p |"
    lines = [
        f"Text: the last 60 % of `eval.txt` ({report['scored_tokens']:,} tokens scored); reference: the F32 proxy.",
        "",
        head,
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['label']} | {row_cells(r)} |" for r in rows]
    doc = {"machine": machine(), "seconds": time.perf_counter() - started, "keep": args.keep, "rows": rows}
    (HERE / "plan_pruned.json").write_text(json.dumps({**doc, "report": report}, indent=1, default=str) + "\n")
    (HERE / "plan_pruned.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
