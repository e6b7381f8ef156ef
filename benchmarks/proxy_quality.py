"""Every preset plain and with one imatrix, and size-targeted plans, on the proxy with real trained weights.

    python benchmarks/proxy.py --workdir W                      # once: the proxy (W/checkpoint, W/proxy-F32.gguf)
    python benchmarks/proxy_quality.py --workdir W [--chunks 8] [--plans q2_k,...,q6_k] [--e8 q3_k_m,q4_k_m]

The proxy (benchmarks/proxy.py: SmolLM2-135M-Instruct as a qwen3_moe, 8 experts, 2 per token) has 8 experts,
and llama.cpp's presets carry rules for exactly 8 experts (attn_v/attn_k Q8_0, attn_output Q5_K) that never
fire for Marco's 256 or 232. The preset rows are therefore the presets as they apply to Marco: each shipped
preset with its `experts = 8` rules left out (written to OUT/marco/*.toml). The `--e8` rows are the shipped
presets as they stand, which on this 8-expert model do fire those rules: what they would have bought Marco.

One importance matrix, `marco-gguf imatrix` on the Q8_0 over the built-in calibration text (multilingual
prose: the text `convert --calibrate` uses), serves every imatrix file; the evaluation text is W/eval.txt,
held-out Python source that neither the imatrix nor the proxy's own fits saw. Plans are made with
`convert --target-size` equal to each `--plans` preset's imatrix file size and the same imatrix (the first
measures, the others read the measurement cache). Every file is scored in ONE `quality` run against the F32
proxy: PPL, mean and 99 % KLD, same top token; bytes per token are inspect's figure for each file.

OUT (default W/quality) keeps every file and reuses those already there. Writes benchmarks/proxy_quality.json,
proxy_quality.md (the tables pasted into BENCHMARKS.md) and proxy_quality_kld.png.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from quality import IGNORES_IMATRIX, _convert, imatrix_keys, machine, make_imatrix, presets, summary

from marco_gguf import convert
from marco_gguf.gguf_io.info import read_info
from marco_gguf.measure.quality import quality
from marco_gguf.quant.presets import builtin_presets

HERE = Path(__file__).parent
DEFAULT_WORK = Path.home() / ".cache" / "marco-gguf" / "proxy-v2"


def marco_view(preset_id: str, folder: Path) -> Path:
    """The shipped preset without its `experts = 8` rules (the rules llama.cpp guards by n_expert == 8)."""
    text = builtin_presets()[preset_id].read_text(encoding="utf-8")
    blocks = re.split(r"(?m)^(?=\[\[rules\]\]|\[fallbacks\])", text)
    kept = [b for b in blocks if not re.search(r"(?m)^experts\s*=\s*8\s*$", b)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{preset_id}.toml"
    path.write_text("".join(kept), encoding="utf-8")
    return path


def files(model: Path, out: Path, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Every file to score, as rows (series, label, path, ...), and the imatrix's description."""
    view = {p: marco_view(p, out / "presets") for p in presets()}
    q8 = _convert(model, str(view["q8_0"]), out / "marco", None)
    assert q8 is not None
    im_path = out / "proxy.imatrix.gguf"
    timing = None if im_path.is_file() else make_imatrix(q8, None, im_path, args.ctx_size, args.threads)
    rows: list[dict] = []
    for p in presets():
        plain = q8 if p == "q8_0" else _convert(model, str(view[p]), out / "marco", None)
        if plain is not None:
            rows.append({"series": "preset", "label": p, "imatrix": False, "path": plain})
        if p not in IGNORES_IMATRIX:
            path = _convert(model, str(view[p]), out / "marco", im_path)
            rows.append({"series": "preset", "label": p, "imatrix": True, "path": path, "keys": imatrix_keys(path)})
    for p in args.e8.split(",") if args.e8 else []:
        path = _convert(model, p, out / "e8", im_path)
        rows.append({"series": "n_expert == 8 rules", "label": p, "imatrix": True, "path": path})
    sized = {r["label"]: r["path"].stat().st_size for r in rows if r["series"] == "preset" and r["imatrix"]}
    for p in args.plans.split(",") if args.plans else []:
        path, plan = plan_file(model, sized[p], out / "plans", im_path)
        rows.append({"series": "plan", "label": f"plan at {p}", "imatrix": True, "path": path, "plan": plan})
    if missing := [r["label"] for r in rows if r["imatrix"] and r["series"] == "preset" and not r["keys"]]:
        raise SystemExit(f"imatrix files without quantize.imatrix keys: {missing}")
    return rows, {**summary(im_path), "run": timing}


def plan_file(model: Path, size: int, out: Path, imatrix: Path) -> tuple[Path, dict]:
    """The planned file for a target of `size` bytes, and its plan summary (kept beside it for reuse)."""
    plan_toml, summary_json = out / f"plan-{size}.toml", out / f"plan-{size}.json"
    if summary_json.is_file():
        kept = json.loads(summary_json.read_text())
        return Path(kept["path"]), kept["plan"]
    r = convert(model, target_size=size, outdir=out, threads=2, imatrix=imatrix, plan_out=plan_toml, force=True)
    assert r.plan is not None
    summary_json.write_text(json.dumps({"path": str(r.path), "plan": r.plan}, indent=1))
    return r.path, r.plan


def best_preset_at(rows: list[dict], size: int) -> dict | None:
    """The fixed preset (Marco's view, with the imatrix) of lowest mean KLD whose file is no larger than `size`."""
    fits = [r for r in rows if r["series"] == "preset" and r["imatrix"] and r["quality"]["size_bytes"] <= size]
    return min(fits, key=lambda r: r["quality"]["kld"]["value"], default=None)


def row_cells(r: dict) -> str:
    q = r["quality"]
    return (
        f"{q['size_bytes']:,} | {q['bits_per_weight']:.3f} | {r['bytes_per_token']:,} | "
        f"{q['ppl']['value']:.3f} ± {q['ppl']['stderr']:.3f} | {q['kld']['value']:.4f} ± {q['kld']['stderr']:.4f} | "
        f"{q['kld_distribution']['99']:.3f} | {100 * q['same_top_p']['value']:.2f} ± "
        f"{100 * q['same_top_p']['stderr']:.2f} %"
    )


HEAD = "size (bytes) | bits/weight | bytes/token | PPL | mean KLD | 99 % KLD | same top p"


def tables(rows: list[dict], report: dict, im: dict) -> str:
    plain = {r["label"]: r["quality"]["kld"]["value"] for r in rows if r["series"] == "preset" and not r["imatrix"]}
    lines = [
        f"Imatrix: `marco-gguf imatrix` on the Q8_0 over `{im['dataset']}` ({im['chunks']} chunks of {im['ctx']}).",
        f"Text: `{Path(report['text']).name}` ({report['scored_tokens']:,} tokens scored: the second half of "
        f"{report['chunks']} chunks of {report['n_ctx']}). Reference: the F32 proxy, PPL "
        f"{report['ref_ppl']['value']:.3f} ± {report['ref_ppl']['stderr']:.3f}.",
        "",
        f"| preset (Marco's rules) | imatrix | {HEAD} | KLD imatrix/plain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["series"] == "preset"):
        ratio = "" if not r["imatrix"] else "(needs imatrix)" if r["label"] not in plain else None
        if ratio is None:
            ratio = f"{r['quality']['kld']['value'] / plain[r['label']]:.3f}"
        lines.append(f"| {r['label'].upper()} | {'yes' if r['imatrix'] else 'no'} | {row_cells(r)} | {ratio} |")
    lines += ["", f"| file (all with the imatrix) | {HEAD} | best fixed preset no larger | KLD / its KLD |"]
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in (r for r in rows if r["series"] != "preset"):
        best = best_preset_at(rows, r["quality"]["size_bytes"])
        label = r["label"] if r["series"] == "plan" else f"{r['label'].upper()} with n_expert == 8 rules"
        vs = f"{best['label'].upper()} | {r['quality']['kld']['value'] / best['quality']['kld']['value']:.3f}"
        lines.append(f"| {label} | {row_cells(r)} | {vs if best else '- | -'} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.6), dpi=120)
    series = (
        ("preset", False, "o", "presets, plain"),
        ("preset", True, "s", "presets, imatrix"),
        ("n_expert == 8 rules", True, "^", "presets with n_expert == 8 rules, imatrix"),
        ("plan", True, "D", "plans (--target-size), imatrix"),
    )
    for name, imatrix, marker, label in series:
        pts = sorted((r for r in rows if r["series"] == name and r["imatrix"] == imatrix), key=lambda r: r["bpw"])
        if pts:
            ax.plot([r["bpw"] for r in pts], [r["quality"]["kld"]["value"] for r in pts], marker + "-", label=label)
            if name == "preset" and imatrix:
                for r in pts:
                    xy = (r["bpw"], r["quality"]["kld"]["value"])
                    ax.annotate(r["label"], xy, textcoords="offset points", xytext=(4, 4), fontsize=7)
    save_kld_plot(fig, ax, "proxy: SmolLM2-135M-Instruct as qwen3_moe (30 layers, 8 experts, top-2)", path)


def save_kld_plot(fig, ax, title: str, path: Path) -> None:
    """The mean-KLD-against-size axes every proxy plot shares (log KLD), titled and written to `path`."""
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (whole file)")
    ax.set_ylabel("mean KL divergence from F32 (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORK, help="benchmarks/proxy.py's --workdir")
    ap.add_argument("--out", type=Path, default=None, help="where the files go (default: WORKDIR/quality)")
    ap.add_argument("--plans", default="q2_k,q3_k_s,q3_k_m,q4_k_s,q4_k_m,q5_k_m,q6_k", help="plan at these sizes")
    ap.add_argument("--e8", default="q3_k_m,q4_k_m", help="presets also made with the n_expert == 8 rules")
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    started, model, out = time.perf_counter(), args.workdir / "checkpoint", args.out or args.workdir / "quality"
    rows, im = files(model, out, args)
    made = time.perf_counter() - started

    def progress(e) -> None:  # a line per scored file
        if e.done % args.chunks == 0:
            print(f"[{time.strftime('%H:%M:%S')}] scored {e.done}/{e.total} chunks", file=sys.stderr, flush=True)

    report = quality(
        [r["path"] for r in rows],
        ref=args.workdir / "proxy-F32.gguf",
        text=args.workdir / "eval.txt",
        n_ctx=args.ctx_size,
        chunks=args.chunks,
        threads=args.threads,
        progress=progress,
    ).as_dict()
    for r, q in zip(rows, report["results"], strict=True):
        info = read_info(r["path"])
        r |= {"quality": q, "bpw": q["bits_per_weight"], "bytes_per_token": info.bytes_per_token}
        r["path"] = str(r["path"])
    doc = {"machine": machine(), "convert_seconds": made, "seconds": time.perf_counter() - started}
    (HERE / "proxy_quality.json").write_text(
        json.dumps({**doc, "imatrix": im, "report": report, "rows": rows}, indent=1, default=str) + "\n"
    )
    (HERE / "proxy_quality.md").write_text(tables(rows, report, im))
    plot(rows, HERE / "proxy_quality_kld.png")
    print(tables(rows, report, im))


if __name__ == "__main__":
    main()
