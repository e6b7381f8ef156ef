"""Size and RAM of full-size Marco-Mini Q4_K_M kept at 256 / 192 / 128 / 96 experts, from shapes and types alone.

    python benchmarks/prune_size.py            # prints the markdown table pasted into BENCHMARKS.md

No file is synthesized: a pruned GGUF's tensors are the whole model's tensors with the expert stacks and
router rows of the dropped experts cut out (prune never requantizes), so its data size follows from the
published shapes and the Q4_K_M types marco-gguf decides for them (the same plan `convert` streams), and
the RAM needed for a context from the formula `chat` and `inspect` use. The header (metadata and
tokenizer) is the one measured on the full-size Q4_K_M conversion in full_size.json, plus the
marco.prune.* keys (exact, before the header's padding to 32 bytes).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf

from marco_gguf.arch.config import MarcoConfig
from marco_gguf.arch.qwen3moe import keep_experts, plan_tensors
from marco_gguf.gguf_io.info import GGUFInfo, TensorInfo
from marco_gguf.gguf_io.writer import TensorSpec, pack_value
from marco_gguf.hf.safetensors_format import TensorRef
from marco_gguf.quant.presets import load_preset
from marco_gguf.synth.model import SHAPES, tensor_shapes

HERE = Path(__file__).parent
KEEP = (256, 192, 128, 96)
CTX = 8192


def mini_plan():
    s = SHAPES["mini"]
    cfg = {**s, "vocab_size": 151936}
    config = MarcoConfig(
        s["num_hidden_layers"],
        s["hidden_size"],
        s["num_attention_heads"],
        s["num_key_value_heads"],
        s["head_dim"],
        s["num_experts"],
        s["num_experts_per_tok"],
        s["moe_intermediate_size"],
        s["intermediate_size"],
        151936,
        32768,
        1e6,
        1e-6,
        True,
        151643,
        151643,
    )
    refs = {n: TensorRef(n, Path("-"), "BF16", shape, 0, 0) for n, shape in tensor_shapes(cfg)}
    return config, plan_tensors(config, refs, keep_lm_head=False)


def prune_key_bytes(layers: int, keep: int) -> int:
    V = gguf.GGUFValueType
    values = {
        "method": ("reap", V.STRING, None),
        "source_expert_count": (256, V.UINT32, None),
        "source_router_sha256": ("0" * 64, V.STRING, None),
        "kept_experts": (list(range(keep)) * layers, V.ARRAY, V.UINT32),
        "usage_texts": (["text"], V.ARRAY, V.STRING),
        "usage_tokens": (0, V.UINT64, None),
    }
    return sum(8 + len(f"marco.prune.{k}") + 4 + len(pack_value(v, t, sub)) for k, (v, t, sub) in values.items())


def main() -> None:
    config, planned = mini_plan()
    preset = load_preset("q4_k_m")
    header = json.loads((HERE / "full_size.json").read_text())["convert/mini-28L-bf16/q4_k_m"]["header_bytes"]
    rows = [
        "| experts kept | file size (bytes) | size vs 256 | RAM needed, ctx 8192 | weight bytes read per token |",
        "|---|---|---|---|---|",
    ]
    full = None
    for keep in KEEP:
        plan = keep_experts(planned, [list(range(keep))] * config.n_layers) if keep < config.n_experts else planned
        specs = [
            TensorSpec(
                t.name,
                t.shape,
                preset.tensor_type(
                    t, n_layers=config.n_layers, tied=True, n_experts=config.n_experts, n_gqa=2, imatrix=False
                ),
            )
            for t in plan
        ]
        tensors = tuple(
            TensorInfo(
                s.name,
                s.shape,
                s.qtype.name,
                s.nbytes,
                "experts" if "_exps" in s.name else "router" if "gate_inp" in s.name else "other",
            )
            for s in specs
        )
        hparams = {
            "expert_count": keep,
            "expert_used_count": 8,
            "block_count": 28,
            "attention.head_count_kv": 8,
            "attention.key_length": 128,
        }
        info = GGUFInfo(Path("-"), 0, "qwen3moe", None, None, hparams, {}, True, {}, tensors)
        data = sum(s.nbytes + (-s.nbytes % 32) for s in specs)
        size = header + data + (prune_key_bytes(28, keep) if keep < config.n_experts else 0)
        full = full or size
        ram = info.ram_needed(CTX)["total"]
        rows.append(
            f"| {keep} | {size:,} | {size / full:.3f} | {ram / 2**30:.2f} GiB | {info.bytes_per_token / 1e6:.0f} MB |"
        )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
