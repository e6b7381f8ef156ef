"""Plans weighed by measured sensitivity (`convert --target-size ... --sensitivity Q8_0.gguf`) on the proxy,
against the fixed presets and the unweighed plans of proxy_quality.py.

    python benchmarks/plan_sensitivity.py --workdir W     # ~15 min of gains (one llama.cpp pass a tensor), 7 plans

The plans are made exactly as proxy_quality.py makes its own (`convert --target-size` at each preset's imatrix
file size, the same imatrix, the measurements it left in W/quality/plans copied so nothing is measured
again), plus `sensitivity=` the proxy's Q8_0 (W/quality/marco/checkpoint-Q8_0.gguf): the first plan measures
the gains (quant/sensitivity.py) and keeps them beside its output, the others read them. Every plan is
scored in one `quality` run with proxy_quality.py's reference, text and chunks, and compared with the best
fixed preset no larger (from benchmarks/proxy_quality.json, which this reads and does not rewrite).

Writes benchmarks/proxy_sensitivity.json (the gains: per tensor KLD, noise energy, gain), and
proxy_plans_sensitivity.json / .md / _kld.png (the plot; `--plot-only` redraws it from the .json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from proxy_quality import save_kld_plot

from marco_gguf import convert
from marco_gguf.measure.quality import quality

HERE = Path(__file__).parent
DEFAULT_WORK = Path.home() / ".cache" / "marco-gguf" / "proxy-v2" / "steps100"
SIZES = {  # the imatrix presets' file sizes on the proxy (proxy_quality.json), as proxy_quality.py plans them
    "q2_k": 358_493_120,
    "q3_k_s": 417_659_840,
    "q3_k_m": 459_415_232,
    "q4_k_s": 539_951_552,
    "q4_k_m": 570_933_440,
    "q5_k_m": 665_858_240,
    "q6_k": 766_715_840,
}
E8_SIZES = {  # the n_expert == 8 rows' file sizes (proxy_quality.json): llama.cpp's MoE rules, were they to fire
    "q3_k_m_e8": 466_601_408,
    "q4_k_m_e8": 577_036_736,
}


def plans(work: Path, out: Path, model: Path, at: list[str]) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    for m in (work / "quality" / "plans").glob("*.measure-*.json"):  # the measurements, not measured again
        (out / m.name).write_bytes(m.read_bytes())
    rows = []
    for label in at:
        size, started = (SIZES | E8_SIZES)[label], time.perf_counter()
        r = convert(
            work / "checkpoint",
            target_size=size,
            outdir=out,
            threads=2,
            imatrix=work / "quality" / "proxy.imatrix.gguf",
            plan_out=out / f"plan-{label}.toml",
            force=True,
            sensitivity=model,
        )
        assert r.plan is not None
        seconds = time.perf_counter() - started
        print(f"plan at {label}: {r.path.name} {r.plan['types']} {seconds:.0f} s", file=sys.stderr, flush=True)
        rows.append({"label": f"plan at {label}", "path": str(r.path), "plan": r.plan, "seconds": seconds})
    return rows


def table(rows: list[dict]) -> str:
    kept = json.loads((HERE / "proxy_quality.json").read_text())["rows"]
    presets = [r for r in kept if r["series"] == "preset" and r["imatrix"]]
    unweighed = {r["label"]: r["quality"]["kld"]["value"] for r in kept if r["series"] == "plan"}
    lines = [
        "| plan (with the imatrix and --sensitivity) | size (bytes) | bytes/token | PPL | mean KLD | 99 % KLD "
        "| same top p | best fixed preset no larger | its KLD | KLD / its KLD | unweighed plan's ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q = r["quality"]
        size, kld = q["size_bytes"], q["kld"]["value"]
        best = min(
            (p for p in presets if p["quality"]["size_bytes"] <= size), key=lambda p: p["quality"]["kld"]["value"]
        )
        bk = best["quality"]["kld"]["value"]
        lines.append(
            f"| {r['label']} | {size:,} | {r['plan']['plan']['bytes_per_token']:,} "
            f"| {q['ppl']['value']:.3f} ± {q['ppl']['stderr']:.3f} | {kld:.4f} ± {q['kld']['stderr']:.4f} "
            f"| {q['kld_distribution']['99']:.3f} | {100 * q['same_top_p']['value']:.2f} % "
            f"| {best['label'].upper()} | {bk:.4f} | {kld / bk:.3f} | {unweighed.get(r['label'], math.nan) / bk:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Mean KLD against bits per weight: the fixed presets (imatrix), the unweighed plans and the weighed ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = json.loads((HERE / "proxy_quality.json").read_text())["rows"]
    series = (
        ([r for r in kept if r["series"] == "preset" and r["imatrix"]], "s", "fixed presets (Marco's rules), imatrix"),
        ([r for r in kept if r["series"] == "plan"], "D", "plans without --sensitivity"),
        (rows, "o", "plans with --sensitivity"),
    )
    fig, ax = plt.subplots(figsize=(7.0, 4.6), dpi=120)
    for pts, marker, label in series:
        pts = sorted(pts, key=lambda r: r["quality"]["bits_per_weight"])
        xs = [r["quality"]["bits_per_weight"] for r in pts]
        ax.plot(xs, [r["quality"]["kld"]["value"] for r in pts], marker + "-", label=label, markersize=4)
        if marker == "s":
            for r, x in zip(pts, xs, strict=True):
                xy = (x, r["quality"]["kld"]["value"])
                ax.annotate(r["label"], xy, textcoords="offset points", xytext=(4, 4), fontsize=6)
    save_kld_plot(fig, ax, "proxy (SmolLM2-135M as qwen3_moe, 8 experts, top-2): plans against fixed presets", path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORK, help="benchmarks/proxy.py's --workdir")
    ap.add_argument("--out", type=Path, default=None, help="where the plans go (default: WORKDIR/quality/sensitivity)")
    ap.add_argument("--model", type=Path, default=None, help="the GGUF gains are measured on (default: the Q8_0)")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument(
        "--at", default=",".join(SIZES), help="the budgets, by preset name (default: all 7; or q3_k_m_e8 ...)"
    )
    ap.add_argument("--tag", default="", help="suffix of the result files (another --model, another run)")
    ap.add_argument("--plot-only", action="store_true", help="only redraw the plot from the committed results")
    args = ap.parse_args()
    png = HERE / f"proxy_plans_sensitivity{args.tag}_kld.png"
    if args.plot_only:
        plot(json.loads((HERE / f"proxy_plans_sensitivity{args.tag}.json").read_text())["rows"], png)
        return
    started, work = time.perf_counter(), args.workdir
    out = args.out or work / "quality" / "sensitivity"
    model = args.model or work / "quality" / "marco" / "checkpoint-Q8_0.gguf"
    rows = plans(work, out, model, args.at.split(","))
    made = time.perf_counter() - started
    report = quality(
        [Path(r["path"]) for r in rows], ref=work / "proxy-F32.gguf", text=work / "eval.txt", chunks=args.chunks
    ).as_dict()
    for r, q in zip(rows, report["results"], strict=True):
        r["quality"] = q
    [cache] = out.glob("*.sensitivity-*.json")
    gains = json.loads(cache.read_text())
    tensors = {n: {"kld": k, "energy": e, "gain": k / e} for n, (k, e) in gains["tensors"].items()}
    (HERE / f"proxy_sensitivity{args.tag}.json").write_text(
        json.dumps({"model": gains["model"], "tensors": tensors}, indent=1)
    )
    doc = {"plans_seconds": made, "seconds": time.perf_counter() - started, "ref_ppl": report["ref_ppl"]}
    (HERE / f"proxy_plans_sensitivity{args.tag}.json").write_text(
        json.dumps({**doc, "rows": rows}, indent=1, default=str)
    )
    (HERE / f"proxy_plans_sensitivity{args.tag}.md").write_text(table(rows))
    plot(rows, png)
    print(table(rows))


if __name__ == "__main__":
    main()
