"""What pruning costs on the trained tiny Marco: KL divergence from the unpruned model against N, REAP against
frequency, with usage measured on the scored kind of text or on another kind.

    python benchmarks/train_tiny_marco.py                 # once (another benchmark's model)
    python benchmarks/prune_quality.py [--model DIR] [--keep 48,32,16,8] [-c 512] [--chunks 16] [--threads 2]
    python benchmarks/prune_quality.py --model W/checkpoint --text eval-150k.txt --keep 6,4,3 --chunks 8 \
        --usage code --name prune_quality_proxy --title "proxy (SmolLM2 as qwen3_moe, 8 experts top-2), held-out code"

The tiny model (4 layers, 64 experts, 8 per token) learned Python code and license texts. Usage is measured
with `marco_gguf.experts.usage.expert_usage` on the first 40 % of its held-out eval.txt (code) and, for the
cross-domain rows, on license texts from /usr/share/common-licenses (text it was trained on, of another kind);
every pruned file is scored with `marco_gguf.measure.quality.quality` against the unpruned F16 on the last 60 % of
eval.txt (code no usage run saw). All files are F16: pruning slices the F16 GGUF, so the divergence is the
pruning's alone. The second command runs the same on the proxy with real trained weights (benchmarks/proxy.py;
its eval.txt is held-out Python source too). Writes benchmarks/NAME.json, NAME.md (pasted into BENCHMARKS.md)
and NAME.png.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from quality import machine

from marco_gguf import convert
from marco_gguf.experts.prune import prune
from marco_gguf.experts.report import build_report
from marco_gguf.experts.usage import expert_usage
from marco_gguf.experts.usage_file import write_usage
from marco_gguf.measure.quality import quality

HERE = Path(__file__).parent
LICENSES = ("Apache-2.0", "GPL-3", "LGPL-3", "MPL-2.0", "Artistic", "BSD", "GFDL-1.3")


def texts(eval_text: Path, out: Path) -> dict[str, Path]:
    code = eval_text.read_text(encoding="utf-8")
    cut = int(len(code) * 0.4)
    paths = {"code": out / "code-usage.txt", "licenses": out / "licenses-usage.txt", "score": out / "code-score.txt"}
    paths["code"].write_text(code[:cut], encoding="utf-8")
    paths["score"].write_text(code[cut:], encoding="utf-8")
    licenses = [Path("/usr/share/common-licenses") / n for n in LICENSES]
    paths["licenses"].write_text(
        "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in licenses if p.is_file()), encoding="utf-8"
    )
    return paths


def table(rows: list[dict], experts: int, overlap: float | None) -> str:
    lines = [
        f"Core-expert overlap of the two usage texts (Jaccard, 50 % of the routing mass, mean over layers): "
        f"{overlap:.2f}."
        if overlap is not None
        else "Usage measured on one text.",
        "",
        f"| experts kept (of {experts}) | usage text | method | file size (bytes) | PPL | mean KLD | 99 % KLD | same top p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (-r["keep"], r["usage"], r["method"])):
        q = r["quality"]
        lines.append(
            f"| {r['keep']} | {r['usage']} | {r['method']} | {q['size_bytes']:,} | "
            f"{q['ppl']['value']:.3f} ± {q['ppl']['stderr']:.3f} | {q['kld']['value']:.2e} ± "
            f"{q['kld']['stderr']:.1e} | {q['kld_distribution']['99']:.2e} | "
            f"{100 * q['same_top_p']['value']:.1f} ± {100 * q['same_top_p']['stderr']:.1f} % |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], experts: int, per_token: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for usage, style in (("code", "-"), ("licenses", "--")):
        for method, marker in (("reap", "o"), ("frequency", "s")):
            pts = sorted((r for r in rows if r["usage"] == usage and r["method"] == method), key=lambda r: r["keep"])
            if not pts:
                continue
            ax.errorbar(
                [r["keep"] for r in pts],
                [r["quality"]["kld"]["value"] for r in pts],
                yerr=[r["quality"]["kld"]["stderr"] for r in pts],
                fmt=marker + style,
                capsize=3,
                label=f"{method}, usage on {usage}",
            )
    ax.set_yscale("log")
    ax.set_xlabel(f"experts kept per layer (of {experts}; {per_token} per token)")
    ax.set_ylabel("mean KL divergence from unpruned (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path.home() / ".cache" / "marco-gguf" / "tiny-marco")
    ap.add_argument("--keep", default="48,32,16,8")
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", type=Path, default=None, help="held-out code (default: MODEL/eval.txt)")
    ap.add_argument("--usage", default="code,licenses", help="usage texts: code (40 %% of eval.txt), licenses")
    ap.add_argument("--name", default="prune_quality", help="stem of the .json/.md/.png written here")
    ap.add_argument("--title", default="tiny trained Marco, scored on held-out code")
    args = ap.parse_args()
    keeps = [int(k) for k in args.keep.split(",")]
    with tempfile.TemporaryDirectory(prefix="marco-prune-quality-") as tmp:
        out = Path(tmp)
        t = texts(args.text or args.model / "eval.txt", out)
        ref = convert(args.model, preset="f16", outdir=out, threads=args.threads).path
        measured = expert_usage(
            ref,
            [t[u] for u in args.usage.split(",")],
            labels=args.usage.split(","),
            ctx=args.ctx_size,
            threads=args.threads,
        )
        usage_files = {}
        for one in measured.texts:  # one usage file per text
            usage_files[one.label] = write_usage(replace(measured, texts=(one,)), out / f"{one.label}.usage.json")
        made = [
            (
                keep,
                label,
                method,
                prune(
                    ref,
                    keep=keep,
                    usage=usage_files[label],
                    method=method,
                    outfile=out / f"p{keep}-{label}-{method}.gguf",
                ).path,
            )
            for keep in keeps
            for label in usage_files
            for method in ("reap", "frequency")
        ]
        report = quality(
            [p for *_, p in made],
            ref=ref,
            text=t["score"],
            n_ctx=args.ctx_size,
            chunks=args.chunks,
            threads=args.threads,
        ).as_dict()
    rows = [{"keep": k, "usage": u, "method": m, "quality": q} for (k, u, m, _), q in zip(made, report["results"])]
    overlap = build_report(measured).similarity[0][1] if len(measured.texts) > 1 else None
    doc = {
        "machine": machine(),
        "usage_tokens": {x.label: x.tokens for x in measured.texts},
        "overlap": overlap,
        "report": {k: v for k, v in report.items() if k != "results"},
        "rows": rows,
    }
    (HERE / f"{args.name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (HERE / f"{args.name}.md").write_text(table(rows, measured.model.experts, overlap))
    plot(rows, measured.model.experts, measured.model.experts_per_token, HERE / f"{args.name}.png", args.title)
    print(table(rows, measured.model.experts, overlap))


if __name__ == "__main__":
    main()
