"""PEFT LoRA adapters made by the `peft` package itself on a fixture checkpoint, and PEFT's merged reference.

PEFT initialises lora_B to zeros (an adapter that changes nothing); every factor is set to random non-zero
values, scaled so the adapter moves the logits clearly without swamping the base.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Qwen3MoeForCausalLM


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
