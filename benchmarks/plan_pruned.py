"""A tight budget: pruned experts with a larger plan against all experts with a smaller plan, at the same size.

    python benchmarks/proxy_quality.py --workdir W          # first: the proxy's imatrix, Q8_0 and plans
    python benchmarks/plan_pruned.py --workdir W [--keep 6] [--at q2_k,q3_k_m] [--chunks 8]

On the proxy (benchmarks/proxy.py, 8 experts, 2 per token): expert usage is measured with `expert_usage` on the
Q8_0 over the first 40 % of the held-out eval.txt (code, as prune_quality.py does); `prune --keep K --method reap
--format hf` writes the pruned checkpoint, the imatrix is sliced alike (`slice_imatrix`, as `prune --imatrix`
does), and `convert --target-size` plans the pruned model at the size of each `--at` preset's imatrix file.
Scored in one `quality` run against the F32 proxy on the last 60 % of eval.txt (code no usage run saw): the
pruned plan, the all-experts plan at the same size (proxy_quality.py's) and the fixed preset of that size.
Writes benchmarks/plan_pruned.json and plan_pruned.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from proxy_quality import plan_file, row_cells
from prune_quality import texts
from quality import machine

from marco_gguf import convert
from marco_gguf.experts.prune import prune, slice_imatrix
from marco_gguf.experts.usage import expert_usage
from marco_gguf.gguf_io.info import read_info
from marco_gguf.measure.quality import quality
from marco_gguf.quant.imatrix_file import read_imatrix, write_imatrix

HERE = Path(__file__).parent


def pruned_model(work: Path, out: Path, keep: int, usage_text: Path, imatrix: Path) -> tuple[Path, Path]:
    """The REAP-pruned checkpoint and its sliced imatrix (made once, reused)."""
    folder, sliced = out / f"pruned-{keep}", out / f"pruned-{keep}.imatrix.gguf"
    if folder.is_dir() and sliced.is_file():
        return folder, sliced
    q8 = work / "quality" / "marco" / "checkpoint-Q8_0.gguf"
    usage = out / "code.usage.json"
    if not usage.is_file():
        expert_usage(q8, [usage_text], labels=["code"], threads=2, usage=usage)
    r = prune(work / "checkpoint", keep=keep, usage=usage, method="reap", format="hf", outfile=folder, force=True)
    write_imatrix(slice_imatrix(read_imatrix(imatrix), r.kept, r.experts_before), sliced)
    return folder, sliced


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "marco-gguf" / "proxy-v2")
    ap.add_argument("--keep", type=int, default=6)
    ap.add_argument("--at", default="q2_k,q3_k_m", help="presets whose imatrix file sizes are the budgets")
    ap.add_argument("--chunks", type=int, default=8)
    args = ap.parse_args()
    started, work = time.perf_counter(), args.workdir
    out = work / "pruned"
    out.mkdir(parents=True, exist_ok=True)
    split = texts(work / "eval.txt", out)  # prune_quality.py's split: usage on 40 %, scoring on the rest
    usage_text, score_text = split["code"], split["score"]
    imatrix = work / "quality" / "proxy.imatrix.gguf"
    folder, sliced = pruned_model(work, out, args.keep, usage_text, imatrix)
    rows = []
    for p in args.at.split(","):
        preset_file = work / "quality" / "marco" / f"checkpoint-i1-{p.upper()}.gguf"
        size = preset_file.stat().st_size
        full, _ = plan_file(work / "checkpoint", size, work / "quality" / "plans", imatrix)
        pruned = convert(folder, target_size=size, outdir=out, threads=2, imatrix=sliced, force=True).path
        rows += [
            {"label": f"{p.upper()} (all 8 experts)", "path": preset_file},
            {"label": f"plan at {p.upper()}'s size, all 8 experts", "path": full},
            {"label": f"plan at {p.upper()}'s size, {args.keep} of 8 experts (REAP)", "path": pruned},
        ]
    report = quality(
        [r["path"] for r in rows], ref=work / "proxy-F32.gguf", text=score_text, chunks=args.chunks, threads=2
    ).as_dict()
    for r, q in zip(rows, report["results"], strict=True):
        r |= {"quality": q, "bytes_per_token": read_info(r["path"]).bytes_per_token, "path": str(r["path"])}
    head = "| file | size (bytes) | bits/weight | bytes/token | PPL | mean KLD | 99 % KLD | same top p |"
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
