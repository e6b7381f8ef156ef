"""PEFT LoRA adapters made by the `peft` package itself on a fixture checkpoint, and PEFT's merged reference.

PEFT initialises lora_B to zeros (an adapter that changes nothing); every factor is set to random non-zero
values, scaled so the adapter moves the logits clearly without swamping the base.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Qwen3MoeForCausalLM

EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")  # target_parameters of transformers 5's fused experts


@dataclass(frozen=True)
class Adapter:
    """A LoraConfig's fields, kept hashable so each adapter is made once per session."""

    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    target_parameters: tuple[str, ...] = ()
    modules_to_save: tuple[str, ...] = ()
    r: int = 4
    alpha: float = 8.0
    use_rslora: bool = False
    rank_pattern: tuple = ()  # (pattern, rank) pairs
    alpha_pattern: tuple = ()
    seed: int = 0

    def config(self) -> LoraConfig:
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            target_modules=list(self.target_modules),
            target_parameters=list(self.target_parameters) or None,
            modules_to_save=list(self.modules_to_save) or None,
            use_rslora=self.use_rslora,
            rank_pattern=dict(self.rank_pattern),
            alpha_pattern=dict(self.alpha_pattern),
        )


def load_f32(base: Path) -> Qwen3MoeForCausalLM:
    return Qwen3MoeForCausalLM.from_pretrained(base, dtype=torch.float32).eval()


def make_adapter(base: Path, folder: Path, adapter: Adapter) -> Path:
    """Save a PEFT adapter for the checkpoint `base` into `folder`, its factors random and non-zero."""
    model = get_peft_model(load_f32(base), adapter.config())
    gen = torch.Generator().manual_seed(adapter.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.05 if "lora_A" in name else 0.2))
            elif "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(folder)
    return folder


def merged_logits(base: Path, folder: Path, tokens: list[int]) -> torch.Tensor:
    """PEFT's own merge (merge_and_unload) of the adapter into the float32 base, run by transformers."""
    model = PeftModel.from_pretrained(load_f32(base), folder).merge_and_unload().eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


def peft_logits(base: Path, folder: Path, tokens: list[int]) -> torch.Tensor:
    """The unmerged PEFT model's logits: the base with the adapter applied on the fly."""
    model = PeftModel.from_pretrained(load_f32(base), folder).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


def save_merged(base: Path, folder: Path, out: Path) -> Path:
    """PEFT's merged model saved as a float32 checkpoint, with the base's tokenizer files beside it."""
    model = PeftModel.from_pretrained(load_f32(base), folder).merge_and_unload()
    model.save_pretrained(out)
    for f in base.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")) or f.name == "generation_config.json":
            shutil.copy(f, out / f.name)
    return out


def per_expert_copy(fused: Path, out: Path, n_experts: int, expert_ff: int) -> Path:
    """The fused-expert adapter `fused` rewritten in transformers 4.x's per-expert module layout (what PEFT makes
    for `target_modules=["gate_proj", "up_proj", "down_proj"]` there): the same model, other tensor names.

    PEFT's fused layout (ParamWrapper): lora_A [E*r, in] expert-major, lora_B [out, r*E] with column k*E + e."""
    from safetensors.torch import load_file, save_file

    state, split = load_file(fused / "adapter_model.safetensors"), {}
    for name, t in state.items():
        if ".mlp.experts." not in name:
            split[name] = t
        if ".mlp.experts." not in name or not name.endswith("lora_A.weight"):
            continue
        layer_prefix = name[: name.index(".mlp.experts") + len(".mlp.experts")]
        a, b = t, state[name.replace("lora_A", "lora_B")]
        r = a.shape[0] // n_experts
        for e in range(n_experts):
            a_e, b_e = a[e * r : (e + 1) * r], b[:, e::n_experts]
            parts = {"gate_proj": b_e[:expert_ff], "up_proj": b_e[expert_ff:]} if len(b) == 2 * expert_ff else {}
            for module, rows in (parts or {"down_proj": b_e}).items():
                split[f"{layer_prefix}.{e}.{module}.lora_A.weight"] = a_e.clone()
                split[f"{layer_prefix}.{e}.{module}.lora_B.weight"] = rows.contiguous()
    out.mkdir(parents=True)
    save_file(split, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((fused / "adapter_config.json").read_text())
    cfg["target_modules"] = sorted(set(cfg["target_modules"]) | {"gate", "gate_proj", "up_proj", "down_proj"})
    cfg["target_parameters"] = [p for p in cfg["target_parameters"] if "experts" not in p]
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out
