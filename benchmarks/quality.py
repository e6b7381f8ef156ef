"""Quality of every preset on the trained tiny Marco: size, bits/weight, perplexity, KLD and same-top-p against F16.

    python benchmarks/train_tiny_marco.py            # once: ~15 minutes, writes ~/.cache/marco-gguf/tiny-marco
    python benchmarks/quality.py [--model DIR] [-c 512] [--chunks 40] [--threads 2] [--imatrix FILE]

Converts the checkpoint with each preset in PRESETS (F16 is the reference), measures every file
with `marco_gguf.quality.quality` on the held-out eval.txt the training script wrote, and writes
benchmarks/quality.json, the table in benchmarks/quality.md (pasted into BENCHMARKS.md) and
benchmarks/quality_kld.png (mean KLD against bits/weight). The imatrix presets of issue 12 part A
slot in by adding their ids to PRESETS; `--imatrix FILE` is passed to convert for them and marks
the rows (the column stays "no" until convert accepts it).
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import tempfile
from pathlib import Path

from marco_gguf import convert
from marco_gguf.quality import quality

HERE = Path(__file__).parent
REFERENCE = "f16"
PRESETS = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_k_s")  # every quantized preset that exists today


def _convert(model: Path, preset: str, out: Path, imatrix: Path | None):
    kwargs = {"preset": preset, "outdir": out, "threads": 2}
    if imatrix and "imatrix" in inspect.signature(convert).parameters:
        kwargs["imatrix"] = imatrix
    return convert(model, **kwargs), "imatrix" in kwargs


def machine() -> str:
    import llama_cpp

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return (
        f"{cpu}, {len(__import__('os').sched_getaffinity(0))} cores, Python {platform.python_version()}, "
        f"llama-cpp-python {llama_cpp.__version__}"
    )


def table(rows: list[dict], report: dict) -> str:
    lines = [
        f"Text: `{Path(report['text']).name}` ({report['text_tokens']:,} tokens; {report['scored_tokens']:,} scored: "
        f"the second half of {report['chunks']} chunks of {report['n_ctx']}). Reference: F16, PPL "
        f"{report['ref_ppl']['value']:.4f} ± {report['ref_ppl']['stderr']:.4f}.",
        "",
        "| preset | imatrix | file size (bytes) | bits/weight | PPL | ln(PPL/PPL(F16)) | mean KLD | 99 % KLD | same top p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q = r["quality"]
        lines.append(
            f"| {r['preset']} | {'yes' if r['imatrix'] else 'no'} | {q['size_bytes']:,} | "
            f"{q['bits_per_weight']:.2f} | {q['ppl']['value']:.4f} ± {q['ppl']['stderr']:.4f} | "
            f"{q['ln_ppl_ratio']['value']:.5f} ± {q['ln_ppl_ratio']['stderr']:.5f} | "
            f"{q['kld']['value']:.6f} ± {q['kld']['stderr']:.6f} | {q['kld_distribution']['99']:.5f} | "
            f"{100 * q['same_top_p']['value']:.2f} ± {100 * q['same_top_p']['stderr']:.2f} % |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for imatrix, marker, label in ((False, "o", "plain"), (True, "s", "with imatrix")):
        pts = [r for r in rows if r["imatrix"] == imatrix]
        if pts:
            xs = [r["quality"]["bits_per_weight"] for r in pts]
            ys = [r["quality"]["kld"]["value"] for r in pts]
            es = [r["quality"]["kld"]["stderr"] for r in pts]
            ax.errorbar(xs, ys, yerr=es, fmt=marker, capsize=3, label=label)
            for r, x, y in zip(pts, xs, ys):
                ax.annotate(r["preset"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (whole file)")
    ax.set_ylabel("mean KL divergence from F16 (nats/token)")
    ax.set_title("tiny trained Marco (4 layers, 64 experts top-8, Qwen3 vocabulary)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path.home() / ".cache" / "marco-gguf" / "tiny-marco")
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--imatrix", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="marco-quality-") as tmp:
        out = Path(tmp)
        ref, _ = _convert(args.model, REFERENCE, out, None)
        made = [(p, *_convert(args.model, p, out, args.imatrix)) for p in PRESETS]
        report = quality(
            [c.path for _, c, _ in made],
            ref=ref.path,
            text=args.model / "eval.txt",
            n_ctx=args.ctx_size,
            chunks=args.chunks,
            threads=args.threads,
        ).as_dict()
    rows = [{"preset": p, "imatrix": im, "quality": q} for (p, _, im), q in zip(made, report["results"])]
    train = json.loads((args.model / "train_log.json").read_text())
    doc = {
        "machine": machine(),
        "training": {k: v for k, v in train.items() if k != "log"},
        "report": report,
        "rows": rows,
    }
    (HERE / "quality.json").write_text(json.dumps(doc, indent=1) + "\n")
    (HERE / "quality.md").write_text(table(rows, report))
    plot(rows, HERE / "quality_kld.png")
    print(table(rows, report))


if __name__ == "__main__":
    main()
