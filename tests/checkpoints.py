"""Small Marco-shaped checkpoints written by transformers' own Qwen3MoeForCausalLM.save_pretrained.

The weights are random but scaled like a trained model's, and norms/routers are perturbed so that
a wrong tensor mapping (swapped norms, transposed experts, misrouted tokens) changes the logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from marco_gguf.synth.qwen_vocab import VocabInfo, write_tokenizer_files


@dataclass(frozen=True)
class Spec:
    """A fixture's shape and on-disk layout; defaults follow the issue (hidden 256, 16 experts top-4)."""

    layers: int = 2
    hidden: int = 256
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    experts: int = 16
    top_k: int = 4
    expert_ff: int = 256
    vocab: str = "small"  # "small" or "qwen3" (the real 151,936-row vocabulary)
    dtype: str = "bf16"  # bf16 or f32 on disk
    shard_size: str | None = "2MB"  # None: one model.safetensors
    layout: str = "per_expert"  # per_expert (save_pretrained) or fused (transformers 5.x in-memory names)
    config_style: str = "5.x"  # 5.x (num_local_experts, rope_parameters) or 4.x (num_experts, rope_theta)
    tied: bool = True
    lm_head: str | None = None  # None, "same" (tied copy saved as lm_head.weight)
    seed: int = 0
    extra_config: tuple = ()  # (key, value) pairs added to the config (kept hashable for caching)


def _vocab_size(info: VocabInfo) -> int:
    return 151936 if info.kind == "qwen3" else -(-info.n_tokens // 64) * 64


def build_model(spec: Spec, info: VocabInfo) -> Qwen3MoeForCausalLM:
    cfg = Qwen3MoeConfig(
        vocab_size=_vocab_size(info),
        hidden_size=spec.hidden,
        intermediate_size=3 * spec.hidden,
        moe_intermediate_size=spec.expert_ff,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        num_experts=spec.experts,
        num_experts_per_tok=spec.top_k,
        norm_topk_prob=True,
        tie_word_embeddings=spec.tied,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        bos_token_id=info.bos_token_id,
        eos_token_id=info.endoftext_id,
        **dict(spec.extra_config),
    )
    cfg.rope_parameters = {"rope_theta": 1000000.0, "rope_type": "default"}
    torch.manual_seed(spec.seed)
    model = Qwen3MoeForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # norms: near 1 but distinct, so a swapped norm shows in the logits
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("mlp.gate.weight"):  # routers: decisive top-k, no near-ties
                p.normal_(0.0, 0.5)
            else:
                # std 0.05 lets every sublayer move the residual stream (embeddings std 0.1), so each is tested
                p.normal_(0.0, 0.1 if "embed" in name else 0.05)
    return model.to(torch.bfloat16 if spec.dtype == "bf16" else torch.float32)


def _rewrite_config_4x(folder: Path) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg["num_experts"] = cfg.pop("num_local_experts")
    rope = cfg.pop("rope_parameters")
    cfg.update(rope_theta=rope["rope_theta"], rope_scaling=None, transformers_version="4.57.1")
    path.write_text(json.dumps(cfg, indent=2))


def _save_fused(model: Qwen3MoeForCausalLM, folder: Path) -> None:
    # the in-memory transformers 5.x names: mlp.experts.gate_up_proj [E, 2I, H] and down_proj [E, H, I]
    state = {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if k != "lm_head.weight" or not model.config.tie_word_embeddings
    }
    assert any(k.endswith("experts.gate_up_proj") for k in state), "transformers no longer fuses experts in memory"
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.config.architectures = ["Qwen3MoeForCausalLM"]
    model.config.save_pretrained(folder)


def _add_lm_head_copy(folder: Path) -> None:
    from safetensors import safe_open

    src = folder / "model.safetensors"
    with safe_open(str(src), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has keys(), no iteration
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    save_file(state, str(src), metadata={"format": "pt"})


def make_checkpoint(folder: Path, spec: Spec, *, cache_dir: Path | None = None) -> tuple[Path, Qwen3MoeForCausalLM]:
    """Write tokenizer + weights for `spec` into `folder`; returns the folder and the model (in its dtype)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = write_tokenizer_files(folder, kind=spec.vocab, cache_dir=cache_dir)
    model = build_model(spec, info)
    if spec.layout == "fused":
        _save_fused(model, folder)
    else:
        kwargs = {"max_shard_size": spec.shard_size} if spec.shard_size else {"max_shard_size": "100GB"}
        model.save_pretrained(folder, **kwargs)
    if spec.lm_head == "same":
        _add_lm_head_copy(folder)
    if spec.config_style == "4.x":
        _rewrite_config_4x(folder)
    return folder, model


def reference_logits(folder: Path, tokens: list[int]) -> torch.Tensor:
    """transformers' float32 forward over `tokens`, loading the checkpoint itself as float32.

    Loading (rather than casting the in-memory bf16 model) matters: a cast would also round
    RoPE's inv_freq buffer to bf16, an error of the reference, not of the GGUF.
    """
    model = Qwen3MoeForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


@dataclass(frozen=True)
class DenseSpec:
    """A small dense Qwen3 (Qwen3ForCausalLM) for `upcycle`: written by transformers' save_pretrained."""

    layers: int = 2
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 32
    ff: int = 384
    dtype: str = "f32"  # f32 or bf16 on disk
    tied: bool = True
    shard_size: str | None = None
    seed: int = 0


def build_dense(spec: DenseSpec, info: VocabInfo):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=_vocab_size(info),
        hidden_size=spec.hidden,
        intermediate_size=spec.ff,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        tie_word_embeddings=spec.tied,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        bos_token_id=info.bos_token_id,
        eos_token_id=info.endoftext_id,
    )
    cfg.rope_parameters = {"rope_theta": 1000000.0, "rope_type": "default"}
    torch.manual_seed(spec.seed)
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # norms near 1 but distinct
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:  # large enough that every sublayer moves the residual stream
                p.normal_(0.0, 0.1 if "embed" in name else 0.05)
    return model.to(torch.bfloat16 if spec.dtype == "bf16" else torch.float32)


def make_dense_checkpoint(folder: Path, spec: DenseSpec, *, cache_dir: Path | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    info = write_tokenizer_files(folder, kind="small", cache_dir=cache_dir)
    model = build_dense(spec, info)
    model.save_pretrained(folder, max_shard_size=spec.shard_size or "100GB")
    return folder


def logits_of(folder: Path, tokens: list[int]) -> torch.Tensor:
    """transformers' float32 forward of whatever causal LM the folder holds (dense or MoE)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]
