"""Llama attention -> Qwen3 attention by layer-wise distillation (benchmarks/proxy.py's step 2).

Qwen3 RMS-normalises each head's q and k (q_norm/k_norm) before RoPE; llama does not, so a llama's attention
logits carry each token's |q| and |k| and a Qwen3's cannot. No choice of the two norm weights alone gives the
function back (a constant from the measured head RMS cost 2.4 nats of KL on SmolLM2), so q_proj, k_proj and
the norm weights are fitted together, one layer at a time, bottom up, in float32 on calibration text:

- a layer's input is the residual stream of the already-fitted Qwen3 layers below it (errors do not compound
  unseen), its target is the dense llama attention's output (after o_proj) for that same input;
- the loss is the squared error relative to the target's energy, Adam over random batches of sequences;
- v_proj, o_proj, the FFN and every norm outside attention are the llama's, unchanged.

Pure torch (no transformers): the functions follow transformers' LlamaAttention/Qwen3Attention (rotate_half
RoPE, GQA by repeating kv heads, causal softmax with 1/sqrt(head_dim)), and proxy.py checks the fitted
weights' logits in transformers' own Qwen3ForCausalLM.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from proxy_surgery import Shape

Tensors = dict[str, torch.Tensor]


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(shape: Shape, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / shape.rope_theta ** (torch.arange(0, shape.head_dim, 2, dtype=torch.float32) / shape.head_dim)
    ang = torch.outer(torch.arange(length, dtype=torch.float32), inv)
    ang = torch.cat([ang, ang], -1)
    return ang.cos(), ang.sin()


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def attention(x: torch.Tensor, w: Tensors, shape: Shape, rope_cs: tuple, qk_norm: tuple | None) -> torch.Tensor:
    """One attention sublayer on [batch, time, hidden] normalised input; qk_norm = (q_norm, k_norm) for Qwen3."""
    b, t, _ = x.shape
    d = shape.head_dim
    q = (x @ w["q_proj"].T).view(b, t, shape.heads, d)
    k = (x @ w["k_proj"].T).view(b, t, shape.kv_heads, d)
    v = (x @ w["v_proj"].T).view(b, t, shape.kv_heads, d)
    if qk_norm is not None:
        q, k = rms_norm(q, qk_norm[0], shape.rms_eps), rms_norm(k, qk_norm[1], shape.rms_eps)
    cos, sin = rope_cs[0][:t, None], rope_cs[1][:t, None]
    q, k = rope(q, cos, sin).transpose(1, 2), rope(k, cos, sin).transpose(1, 2)
    group = shape.heads // shape.kv_heads
    k, v = k.repeat_interleave(group, 1), v.transpose(1, 2).repeat_interleave(group, 1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / math.sqrt(d))
    return out.transpose(1, 2).reshape(b, t, -1) @ w["o_proj"].T


def mlp(x: torch.Tensor, w: Tensors) -> torch.Tensor:
    return (torch.nn.functional.silu(x @ w["gate_proj"].T) * (x @ w["up_proj"].T)) @ w["down_proj"].T


def layer_weights(tensors: dict[str, np.ndarray], i: int) -> Tensors:
    pre = f"model.layers.{i}."
    return {
        k.removeprefix(pre).split(".")[-2]: torch.from_numpy(v)
        for k, v in tensors.items()
        if k.startswith(pre) and k.endswith(".weight")
    }


def head_rms(x: torch.Tensor, proj: torch.Tensor, heads: int, d: int) -> float:
    return float((x @ proj.T).unflatten(-1, (heads, d)).pow(2).mean(-1).sqrt().mean())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).sum() / b.pow(2).sum())


def fit_layer(x: torch.Tensor, w: Tensors, shape: Shape, rope_cs: tuple, *, steps: int, batch: int, seed: int) -> dict:
    """Fit q_proj, k_proj, q_norm, k_norm of one layer; returns the fitted tensors and the relative errors
    (squared, on the last quarter of the sequences, which the fit does not see)."""
    with torch.no_grad():
        target = torch.cat([attention(x[j : j + 4], w, shape, rope_cs, None) for j in range(0, len(x), 4)])
    n_fit = len(x) - max(1, len(x) // 4)
    d = shape.head_dim
    qn = torch.full((d,), head_rms(x[:4], w["q_proj"], shape.heads, d), requires_grad=True)
    kn = torch.full((d,), head_rms(x[:4], w["k_proj"], shape.kv_heads, d), requires_grad=True)
    wq, wk = w["q_proj"].clone().requires_grad_(True), w["k_proj"].clone().requires_grad_(True)
    proj_scale = float(w["q_proj"].std())
    opt = torch.optim.Adam([{"params": [qn, kn], "lr": 5e-2}, {"params": [wq, wk], "lr": 1e-2 * proj_scale}])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)

    def run(rows: slice | torch.Tensor) -> torch.Tensor:
        return attention(x[rows], w | {"q_proj": wq, "k_proj": wk}, shape, rope_cs, (qn, kn))

    held = slice(n_fit, len(x))
    with torch.no_grad():
        before = _rel(run(held), target[held])
    for _ in range(steps):
        rows = torch.randperm(n_fit, generator=gen)[:batch]
        loss = (run(rows) - target[rows]).pow(2).sum() / target[rows].pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        after = _rel(run(held), target[held])
    fitted = {"q_proj": wq.detach(), "k_proj": wk.detach(), "q_norm": qn.detach(), "k_norm": kn.detach()}
    return {"tensors": fitted, "rel_sq_err_before": before, "rel_sq_err_after": after}


def to_qwen3_fitted(
    shape: Shape,
    tensors: dict[str, np.ndarray],
    ids: np.ndarray,
    *,
    steps: int,
    batch: int,
    seed: int,
    log: Callable[[str], None],
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """A llama's tensors as a dense Qwen3's, attention fitted layer by layer on `ids` [sequences, length]."""
    out = dict(tensors)
    rope_cs = rope_tables(shape, ids.shape[1])
    with torch.no_grad():
        h = torch.from_numpy(tensors["model.embed_tokens.weight"])[torch.from_numpy(ids)]
    records = []
    for i in range(shape.layers):
        t0 = time.perf_counter()
        w = layer_weights(tensors, i)
        with torch.no_grad():
            x = rms_norm(h, w["input_layernorm"], shape.rms_eps)
        fit = fit_layer(x, w, shape, rope_cs, steps=steps, batch=batch, seed=seed + i)
        fitted = fit.pop("tensors")
        for name, t in fitted.items():
            out[f"model.layers.{i}.self_attn.{name}.weight"] = t.numpy().astype(np.float32)
        with torch.no_grad():
            w |= fitted
            for j in range(0, len(h), 4):  # the Qwen3 layer's output: the next layer's input
                a = h[j : j + 4] + attention(x[j : j + 4], w, shape, rope_cs, (w["q_norm"], w["k_norm"]))
                h[j : j + 4] = a + mlp(rms_norm(a, w["post_attention_layernorm"], shape.rms_eps), w)
        records.append(fit | {"seconds": round(time.perf_counter() - t0, 1)})
        log(f"layer {i}: attention rel. sq. error {fit['rel_sq_err_before']:.4f} -> {fit['rel_sq_err_after']:.4f}")
    return out, records
