"""Quality of every preset on the trained tiny Marco, plain and with an imatrix: size, bits/weight, PPL, KLD, same-top-p.

    python benchmarks/train_tiny_marco.py            # once: ~15 minutes, writes ~/.cache/marco-gguf/tiny-marco
    python benchmarks/quality.py [--model DIR] [-c 512] [--chunks 40] [--threads 2] [--calibration TEXT] [--workdir DIR]

Converts the checkpoint to F16 (the reference) and Q8_0, computes ONE importance matrix with
`marco-gguf imatrix` on that Q8_0 over the calibration text (default: the built-in text, the one
`convert --calibrate` uses; never the eval text), then converts every shipped quantized preset without and
with it. Presets whose types need an imatrix (iq2_*, iq3_xxs) are refused without one and appear only in
the imatrix series; Q8_0 ignores an imatrix (llama-quantize too), so it has no imatrix row. Every file is
measured with `marco_gguf.measure.quality.quality` against F16 on the held-out eval.txt the training script wrote;
each imatrix row also records that its file carries quantize.imatrix.* keys (the imatrix was used).
--workdir keeps the GGUFs and the imatrix, and reuses those already there (to re-measure with other
--chunks without converting again).
Writes benchmarks/quality.json, the table in benchmarks/quality.md (pasted into BENCHMARKS.md) and
benchmarks/quality_kld.png (mean KLD against bits/weight, plain and imatrix series).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gguf

from marco_gguf import convert
from marco_gguf.base.errors import ImatrixError
from marco_gguf.convert import output_path
from marco_gguf.measure.quality import quality
from marco_gguf.quant.imatrix_file import read_imatrix
from marco_gguf.quant.presets import builtin_presets, load_preset

HERE = Path(__file__).parent
REFERENCE = "f16"
UNQUANTIZED = {"f32", "f16", "bf16"}
IGNORES_IMATRIX = {"q8_0"}  # llama-quant.cpp passes no imatrix to Q8_0's quantizer


def presets() -> list[str]:
    """Every shipped quantized preset, largest files first (by the default type's bits, roughly)."""
    order = [
        "q8_0",
        "q6_k",
        "q5_k_m",
        "q4_k_m",
        "q4_k_s",
        "iq4_xs",
        "iq4_nl",
        "q3_k_l",
        "q3_k_m",
        "iq3_m",
        "q3_k_s",
        "iq3_xxs",
        "q2_k",
        "iq2_m",
        "iq2_xs",
    ]
    shipped = set(builtin_presets()) - UNQUANTIZED
    return [p for p in order if p in shipped] + sorted(shipped - set(order))


def make_imatrix(q8: Path, text: Path | None, out: Path, ctx: int, threads: int) -> dict:
    """`marco-gguf imatrix` as a user runs it; its --json summary."""
    cmd = [
        sys.executable,
        "-m",
        "marco_gguf",
        "imatrix",
        str(q8),
        "-o",
        str(out),
        "-c",
        str(ctx),
        "-t",
        str(threads),
        "--json",
        *(["--text", str(text)] if text else []),
    ]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def _convert(model: Path, preset: str, out: Path, imatrix: Path | None) -> Path | None:
    """The converted file (one already in `out` is reused), or None when the preset needs an imatrix."""
    path = output_path(model, load_preset(preset), outfile=None, outdir=out, name=None, imatrix=imatrix is not None)
    if path.is_file():
        return path
    try:
        return convert(model, preset=preset, outdir=out, threads=2, imatrix=imatrix).path
    except ImatrixError as e:
        if imatrix is None and "needs an importance matrix" in e.message:
            return None
        raise


def summary(path: Path) -> dict:
    """What the table says about the imatrix, from the file itself (so a reused one is described too)."""
    im = read_imatrix(path)
    return {
        "dataset": im.datasets[0] if im.datasets else "?",
        "chunks": im.chunk_count,
        "ctx": im.chunk_size,
        "n_entries": len(im.entries),
    }


def imatrix_keys(path: Path) -> dict:
    fields = gguf.GGUFReader(path).fields
    return {k: fields[k].contents() for k in fields if k.startswith("quantize.imatrix.")}


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


def table(rows: list[dict], report: dict, im: dict) -> str:
    lines = [
        f"Imatrix: `marco-gguf imatrix` on the Q8_0 over `{im['dataset']}` ({im['chunks']} chunks of {im['ctx']} "
        f"tokens, {im['n_entries']} weight tensors).",
        "",
        f"Text: `{Path(report['text']).name}` ({report['text_tokens']:,} tokens; {report['scored_tokens']:,} scored: "
        f"the second half of {report['chunks']} chunks of {report['n_ctx']}). Reference: F16, PPL "
        f"{report['ref_ppl']['value']:.4f} ± {report['ref_ppl']['stderr']:.4f}.",
        "",
        "| preset | imatrix | file size (bytes) | bits/weight | PPL | ln(PPL/PPL(F16)) | mean KLD | 99 % KLD | same top p "
        "| KLD / plain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    plain = {r["preset"]: r["quality"]["kld"]["value"] for r in rows if not r["imatrix"]}
    for r in rows:
        q = r["quality"]
        lines.append(
            f"| {r['preset']} | {'yes' if r['imatrix'] else 'no'} | {q['size_bytes']:,} | "
            f"{q['bits_per_weight']:.2f} | {q['ppl']['value']:.4f} ± {q['ppl']['stderr']:.4f} | "
            f"{q['ln_ppl_ratio']['value']:.5f} ± {q['ln_ppl_ratio']['stderr']:.5f} | "
            f"{q['kld']['value']:.6f} ± {q['kld']['stderr']:.6f} | {q['kld_distribution']['99']:.5f} | "
            f"{100 * q['same_top_p']['value']:.2f} ± {100 * q['same_top_p']['stderr']:.2f} % | "
            f"{ratio(r, plain)} |"
        )
    return "\n".join(lines) + "\n"


def ratio(row: dict, plain: dict) -> str:
    """An imatrix row's mean KLD over its plain row's; '(needs imatrix)' when there is no plain row."""
    if not row["imatrix"]:
        return ""
    if row["preset"] not in plain:
        return "(needs imatrix)"
    return f"{row['quality']['kld']['value'] / plain[row['preset']]:.3f}"


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
    ap.add_argument("--calibration", type=Path, default=None, help="imatrix text (default: the built-in text)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the GGUFs here; files already there are reused")
    args = ap.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="marco-quality-") as tmp:
        out = args.workdir or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        ref = _convert(args.model, REFERENCE, out, None)
        q8 = _convert(args.model, "q8_0", out, None)
        im_path = out / "tiny-marco.imatrix.gguf"
        timing = None if im_path.is_file() else make_imatrix(q8, args.calibration, im_path, args.ctx_size, args.threads)
        made = []  # (preset, imatrix used, file, quantize.imatrix.* keys)
        for p in presets():
            plain = q8 if p == "q8_0" else _convert(args.model, p, out, None)
            if plain is not None:
                made.append((p, False, plain, {}))
            if p not in IGNORES_IMATRIX:
                c = _convert(args.model, p, out, im_path)
                made.append((p, True, c, imatrix_keys(c)))
        missing = [p for p, used, _, keys in made if used and not keys]
        if missing:
            raise SystemExit(f"imatrix files without quantize.imatrix keys: {missing}")
        im = {**summary(im_path), "run": timing}
        report = quality(
            [c for _, _, c, _ in made],
            ref=ref,
            text=args.model / "eval.txt",
            n_ctx=args.ctx_size,
            chunks=args.chunks,
            threads=args.threads,
        ).as_dict()
    rows = [
        {"preset": p, "imatrix": used, "imatrix_keys": keys, "quality": q}
        for (p, used, _, keys), q in zip(made, report["results"])
    ]
    train = json.loads((args.model / "train_log.json").read_text())
    doc = {
        "machine": machine(),
        "training": {k: v for k, v in train.items() if k != "log"},
        "imatrix": im,
        "seconds": time.perf_counter() - started,
        "report": report,
        "rows": rows,
    }
    (HERE / "quality.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (HERE / "quality.md").write_text(table(rows, report, im))
    plot(rows, HERE / "quality_kld.png")
    print(table(rows, report, im))


if __name__ == "__main__":
    main()
