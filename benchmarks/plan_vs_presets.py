"""Planned files (`convert --target-size`) against llama.cpp's fixed presets at the presets' own sizes.

    python benchmarks/plan_vs_presets.py [--model DIR] [--ref F32.gguf] [--text EVAL.txt]
        [--presets q3_k_m,q4_k_m,q5_k_m] [-c 512] [--chunks 8] [--imatrix-chunks 24] [--workdir DIR]

Default model: the trained proxy (SmolLM2-135M upcycled into qwen3_moe, 16 experts top-2) in
~/.cache/marco-gguf/proxy: its checkpoint, its F32 GGUF (the reference) and its held-out eval.txt.

One importance matrix (`marco-gguf imatrix` on the Q8_0, over the built-in calibration text, never the
eval text) serves every file. Each preset is converted with it; then, for each preset, a plan is made with
`--target-size` equal to that preset's file size in bytes and the same imatrix (the first plan measures the
errors, the others read them from the cache). Every file is scored in ONE `quality` run (llama.cpp through
llama-cpp-python; tests/test_quality.py checks it against llama-perplexity) against the F32 reference on
the eval text: PPL, mean and 99 % KLD, same top token. Bytes per token are priced by the planner for the
presets and the plans alike (weight bytes one generated token reads).

--workdir keeps the GGUFs, the imatrix and the measurement cache, and reuses files already there.
Writes benchmarks/plan_vs_presets.json and the table in benchmarks/plan_vs_presets.md (pasted into
BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from quality import machine

import marco_gguf.gguf_io.check
import marco_gguf.hf.tokenizer
from marco_gguf import convert
from marco_gguf.convert import output_path
from marco_gguf.measure.quality import quality
from marco_gguf.quant.imatrix import compute_imatrix
from marco_gguf.quant.imatrix_file import read_imatrix
from marco_gguf.quant.presets import load_preset

HERE = Path(__file__).parent
PROXY = Path.home() / ".cache" / "marco-gguf" / "proxy"


def _smollm_tokenizer() -> None:
    """The proxy keeps SmolLM2's tokenizer, whose pre-tokenizer is not Qwen's: convert refuses it for a Marco
    model. Here that check is lifted and the headers name (as the proxy's F32 GGUF does) llama.cpp's
    `smollm` pre-tokenizer, so every file tokenizes the eval text as the F32 reference does."""
    marco_gguf.hf.tokenizer.check_qwen_bpe = lambda tok, path: None  # type: ignore[assignment]
    marco_gguf.hf.tokenizer.TOKENIZER_PRE = "smollm"  # type: ignore[misc]
    marco_gguf.gguf_io.check.TOKENIZER_PRE = "smollm"  # type: ignore[misc]


def _preset(model: Path, preset: str, out: Path, imatrix: Path | None) -> Path:
    path = output_path(model, load_preset(preset), outfile=None, outdir=out, name=None, imatrix=imatrix is not None)
    if path.is_file():
        return path
    return convert(model, preset=preset, outdir=out, threads=2, imatrix=imatrix).path


def _plan(model: Path, size: int, out: Path, imatrix: Path) -> tuple[Path, dict]:
    """The planned file for a target of `size` bytes, and its plan summary (kept beside it for reuse)."""
    plan_toml = out / f"plan-{size}.toml"
    summary = out / f"plan-{size}.json"
    if summary.is_file():
        kept = json.loads(summary.read_text())
        return Path(kept["path"]), kept["plan"]
    r = convert(model, target_size=size, outdir=out, threads=2, imatrix=imatrix, plan_out=plan_toml, force=True)
    assert r.plan is not None
    summary.write_text(json.dumps({"path": str(r.path), "plan": r.plan}, indent=1))
    return r.path, r.plan


def table(rows: list[dict], report: dict, imatrix: dict, model: str) -> str:
    lines = [
        f"Model: {model}. Imatrix: `marco-gguf imatrix` on the Q8_0 over the built-in text "
        f"({imatrix['chunks']} chunks of {imatrix['ctx']}); every file below uses it.",
        "",
        f"Text: `{Path(report['text']).name}` ({report['scored_tokens']:,} tokens scored: the second half of "
        f"{report['chunks']} chunks of {report['n_ctx']}). Reference: F32, PPL {report['ref_ppl']['value']:.3f} "
        f"± {report['ref_ppl']['stderr']:.3f}.",
        "",
        "| file | size (bytes) | bits/weight | bytes/token | PPL | mean KLD | 99 % KLD | same top p | KLD plan/preset |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q = r["quality"]
        lines.append(
            f"| {r['label']} | {q['size_bytes']:,} | {q['bits_per_weight']:.3f} | {r['bytes_per_token']:,} | "
            f"{q['ppl']['value']:.3f} ± {q['ppl']['stderr']:.3f} | {q['kld']['value']:.5f} ± {q['kld']['stderr']:.5f} "
            f"| {q['kld_distribution']['99']:.4f} | {100 * q['same_top_p']['value']:.2f} ± "
            f"{100 * q['same_top_p']['stderr']:.2f} % | {r.get('ratio', '')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=PROXY / "checkpoint")
    ap.add_argument("--ref", type=Path, default=PROXY / "proxy-F32.gguf")
    ap.add_argument("--text", type=Path, default=PROXY / "eval.txt")
    ap.add_argument("--presets", default="q3_k_m,q4_k_m,q5_k_m")
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--imatrix-chunks", type=int, default=24)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.model == PROXY / "checkpoint":
        _smollm_tokenizer()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="marco-plan-") as tmp:
        out = args.workdir or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        im_path = out / "proxy.imatrix.gguf"
        if not im_path.is_file():
            q8 = _preset(args.model, "q8_0", out, None)
            compute_imatrix(q8, outfile=im_path, ctx=args.ctx_size, chunks=args.imatrix_chunks, threads=2)
        made_im = read_imatrix(im_path)
        im = {"chunks": made_im.chunk_count, "ctx": made_im.chunk_size}
        made: list[tuple[str, Path, dict | None]] = []  # (label, file, plan summary)
        for p in args.presets.split(","):
            preset_file = _preset(args.model, p, out, im_path)
            size = preset_file.stat().st_size
            made.append((load_preset(p).name, preset_file, None))
            plan_file, plan = _plan(args.model, size, out, im_path)
            made.append((f"plan at {load_preset(p).name}'s size", plan_file, plan))
        report = quality(
            [f for _, f, _ in made], ref=args.ref, text=args.text, n_ctx=args.ctx_size, chunks=args.chunks, threads=2
        ).as_dict()
    priced = {p["preset"]: p for _, _, plan in made if plan for p in plan["presets"]}
    rows = []
    for (label, path, plan), q in zip(made, report["results"], strict=True):
        name = label if plan is None else plan["plan"]["preset"]
        row = {"label": label, "file": path.name, "quality": q, "plan": plan}
        row["bytes_per_token"] = plan["plan"]["bytes_per_token"] if plan else priced[name]["bytes_per_token"]
        if plan is not None:
            row["ratio"] = f"{q['kld']['value'] / rows[-1]['quality']['kld']['value']:.3f}"
            row["types"] = plan["types"]
        rows.append(row)
    model = f"{args.model} (reference {args.ref.name})"
    doc = {"machine": machine(), "seconds": time.perf_counter() - started, "imatrix": im, "report": report}
    (HERE / "plan_vs_presets.json").write_text(json.dumps({**doc, "rows": rows}, indent=1, default=str) + "\n")
    (HERE / "plan_vs_presets.md").write_text(table(rows, report, im, model))
    print(table(rows, report, im, model))


if __name__ == "__main__":
    main()
