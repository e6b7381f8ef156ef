#!/usr/bin/env python3
"""`convert --lora` against `convert` on Marco-Mini's published widths: time and peak RSS, side by side.

A random-weight BF16 checkpoint with Marco-Mini's shapes (fewer layers) and a random rank-16 LoRA adapter on every
projection (q/k/v/o, the router, and the fused experts' gate_up_proj and down_proj as PEFT's target_parameters
stores them: lora_A [E*r, in], lora_B [out, r*E]) are converted alternately without and with the adapter, each
in a fresh process (wall time, VmHWM). The adapter's layout is the one tests/test_lora.py proves against PEFT.

    python benchmarks/lora_merge.py --workdir /tmp/lora-bench --layers 4 --reps 2 --preset q8_0
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from one_pass_vs_two_step import machine, run

CONVERT = """
import json, sys, time
from marco_gguf import convert
t = time.perf_counter()
lora = {lora!r}
convert(sys.argv[1], preset=sys.argv[4], outfile=sys.argv[2], threads=int(sys.argv[3]), force=True, lora=lora)
print(json.dumps({{"seconds": time.perf_counter() - t}}))
"""
RANK = 16


def write_adapter(ckpt: Path, folder: Path, rank: int = RANK) -> int:
    """A PEFT-format adapter for the checkpoint's config with random factors; returns its size in bytes."""
    cfg = json.loads((ckpt / "config.json").read_text())
    H, E, ff = cfg["hidden_size"], cfg.get("num_local_experts", cfg.get("num_experts")), cfg["moe_intermediate_size"]
    q, kv = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    rng, tensors = np.random.default_rng(0), {}
    mats = {"self_attn.q_proj": (q, H), "self_attn.k_proj": (kv, H), "self_attn.v_proj": (kv, H)}
    mats |= {"self_attn.o_proj": (H, q), "mlp.gate": (E, H)}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"base_model.model.model.layers.{layer}"
        for module, (out, inp) in mats.items():
            tensors[f"{p}.{module}.lora_A.weight"] = rng.standard_normal((rank, inp), np.float32) * 0.01
            tensors[f"{p}.{module}.lora_B.weight"] = rng.standard_normal((out, rank), np.float32) * 0.01
        for module, (out, inp) in {"mlp.experts.base_layer": (2 * ff, H), "mlp.experts": (H, ff)}.items():
            tensors[f"{p}.{module}.lora_A.weight"] = rng.standard_normal((E * rank, inp), np.float32) * 0.01
            tensors[f"{p}.{module}.lora_B.weight"] = rng.standard_normal((out, rank * E), np.float32) * 0.01
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "target_parameters": ["mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
        "auto_mapping": {"base_model_class": "Qwen3MoeForCausalLM"},
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return (folder / "adapter_model.safetensors").stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lora-bench"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default="q8_0")
    ap.add_argument("--results", type=Path, default=Path(__file__).with_name("lora_merge.json"))
    args = ap.parse_args()
    from marco_gguf import synthesize

    ckpt, adapter = args.workdir / f"mini-{args.layers}L", args.workdir / "adapter-r16"
    if not (ckpt / "config.json").exists():
        synthesize(ckpt, shape="mini", layers=args.layers, dtype="bf16", vocab="auto")
    adapter_bytes = write_adapter(ckpt, adapter)
    runs: dict[str, list[dict]] = {"base": [], "lora": []}
    for rep in range(args.reps):  # alternating, so drift on a shared machine hits both alike
        for kind in ("base", "lora"):
            code = CONVERT.format(lora=str(adapter) if kind == "lora" else None)
            r = run(code, ckpt, args.workdir / "out" / f"{kind}.gguf", args.threads, args.preset)
            runs[kind].append(r)
            print(f"rep {rep} {kind}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss'] / 2**20:.0f} MiB", flush=True)
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    rss = {k: max(r["peak_rss"] for r in v) for k, v in runs.items()}
    result = {
        "machine": machine(),
        "layers": args.layers,
        "preset": args.preset,
        "rank": RANK,
        "adapter_bytes": adapter_bytes,
        "median_wall_s": med,
        "peak_rss": rss,
        "time_ratio": med["lora"] / med["base"],
        "runs": runs,
    }
    args.results.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    shutil.rmtree(args.workdir / "out", ignore_errors=True)


if __name__ == "__main__":
    main()
