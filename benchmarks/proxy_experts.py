"""Step 4 of benchmarks/proxy.py: make the upcycled copies differ. Layer by layer, on the dense model's own FFN
inputs over the calibration text: router rows = spherical k-means centroids of those inputs (so experts see
different tokens), then each expert's redrawn down_proj columns fitted by ridge regression so that the expert
reproduces the dense FFN on the tokens routed to it, then all its down_proj columns refitted the same way, pulled
towards that result (closed-form local distillations). Written in place."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from proxy_surgery import Shape

from marco_gguf.hf.checkpoint import TensorFiles
from marco_gguf.hf.safetensors_format import TensorRef, read_safetensors_header

CTX = 512
DENSE = "qwen3-dense-offgrid"  # the dense Qwen3 the experts are upcycled from (a sibling of the checkpoint)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ffn_inputs(folder: Path, shape: Shape, batches: np.ndarray) -> list[np.ndarray]:
    """Every layer's FFN input (post-attention RMSNorm output) of the padded dense Qwen3 over `batches`."""
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    got: list[list[np.ndarray]] = [[] for _ in range(shape.layers)]
    hooks = [
        layer.mlp.register_forward_hook(lambda _m, inp, _o, i=i: got[i].append(inp[0][0].numpy().copy()))
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        for b in batches:
            model(torch.from_numpy(b[None]))
    for h in hooks:
        h.remove()
    return [np.concatenate(g) for g in got]


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def kmeans_router(x: np.ndarray, experts: int, rng: np.random.Generator, iters: int = 12) -> np.ndarray:
    """Router rows: spherical k-means centroids of the FFN inputs, scaled so that logits span a few units."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = unit[rng.choice(len(unit), experts, replace=False)]
    for _ in range(iters):
        assign = (unit @ c.T).argmax(1)
        for e in range(experts):
            members = unit[assign == e]
            c[e] = members.mean(0) if len(members) else unit[rng.integers(len(unit))]
        c /= np.linalg.norm(c, axis=1, keepdims=True)
    return (c * (8.0 / np.linalg.norm(x, axis=1).mean())).astype(np.float32)  # cosine x 8: decisive, not one-hot


def top_k(x: np.ndarray, router: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(x @ router.T), axis=1)[:, :k]


def refs_of(folder: Path) -> dict[str, TensorRef]:
    out: dict[str, TensorRef] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(read_safetensors_header(f))
    return out


def write_in_place(ref: TensorRef, data: np.ndarray) -> None:
    assert ref.dtype == "F32" and data.nbytes == ref.n_bytes, ref.name
    fd = os.open(ref.file, os.O_WRONLY)
    try:
        os.pwrite(fd, np.ascontiguousarray(data, np.float32).tobytes(), ref.offset)
    finally:
        os.close(fd)


def refit_down(h: np.ndarray, y: np.ndarray, prior: np.ndarray, alpha: float = 1e-2) -> np.ndarray:
    """All of an expert's down_proj columns fitted to its tokens' targets, pulled towards `prior` (ridge towards
    the copied-and-patched matrix, so an expert with few tokens stays near it): argmin |H W^T - Y|^2 +
    lam |W - prior|^2, lam = alpha x the mean diagonal of H^T H."""
    h64 = h.astype(np.float64)
    gram = h64.T @ h64
    lam = alpha * np.trace(gram) / len(gram)
    rhs = h64.T @ y.astype(np.float64) + lam * prior.T.astype(np.float64)
    return np.linalg.solve(gram + lam * np.eye(len(gram)), rhs).T.astype(np.float32)


def differ_layer(files: TensorFiles, refs, layer: int, x: np.ndarray, experts: int, k: int, rng) -> dict:
    """Step 4 for one layer: k-means router, then each expert's redrawn down columns fitted to the dense FFN."""
    pre = f"model.layers.{layer}.mlp"
    dense = {p: files.read_rows(f"{pre}.experts.0.{p}.weight") for p in ("gate_proj", "up_proj", "down_proj")}
    src = TensorFiles(files.folder.parent / DENSE)
    try:
        orig = {p: src.read_rows(f"{pre}.{p}.weight") for p in ("gate_proj", "up_proj", "down_proj")}
    finally:
        src.close()
    target = (silu(x @ orig["gate_proj"].T) * (x @ orig["up_proj"].T)) @ orig["down_proj"].T
    router = kmeans_router(x, experts, rng)
    write_in_place(refs[f"{pre}.gate.weight"], router)
    chosen, before, after, tokens = top_k(x, router, k), [], [], []
    for e in range(experts):
        w = {p: files.read_rows(f"{pre}.experts.{e}.{p}.weight") for p in dense}
        redrawn = np.flatnonzero((w["gate_proj"] != orig["gate_proj"]).any(1))
        mine = np.flatnonzero((chosen == e).any(1))
        h = silu(x[mine] @ w["gate_proj"].T) * (x[mine] @ w["up_proj"].T)
        y = target[mine]
        kept = np.setdiff1d(np.arange(h.shape[1]), redrawn)
        resid = y - h[:, kept] @ w["down_proj"][:, kept].T
        hd = h[:, redrawn].astype(np.float64)
        gram = hd.T @ hd
        gram += np.eye(len(redrawn)) * (1e-3 * np.trace(gram) / max(1, len(redrawn)))
        fitted = np.linalg.solve(gram, hd.T @ resid.astype(np.float64)).T.astype(np.float32)
        err0 = np.linalg.norm(h @ w["down_proj"].T - y) / np.linalg.norm(y)
        w["down_proj"][:, redrawn] = fitted
        w["down_proj"] = refit_down(h, y, w["down_proj"])
        err1 = np.linalg.norm(h @ w["down_proj"].T - y) / np.linalg.norm(y)
        write_in_place(refs[f"{pre}.experts.{e}.down_proj.weight"], w["down_proj"])
        before.append(float(err0))
        after.append(float(err1))
        tokens.append(len(mine))
    return {"rel_err_before": before, "rel_err_after": after, "tokens": tokens}


def make_experts_differ(folder: Path, shape: Shape, calib: np.ndarray, experts: int, k: int, seed: int) -> dict:
    n = (len(calib) - 4 * CTX) // CTX
    batches = calib[: min(n, 48) * CTX].reshape(-1, CTX)
    log(f"FFN inputs over {batches.size:,} calibration tokens")
    xs = ffn_inputs(folder.parent / DENSE, shape, batches)
    refs, rng, layers = refs_of(folder), np.random.default_rng(seed), []
    with TensorFiles(folder) as files:
        for i in range(shape.layers):
            layers.append(differ_layer(files, refs, i, xs[i], experts, k, rng))
            log(
                f"layer {i}: expert FFN error vs dense {np.mean(layers[-1]['rel_err_before']):.3f} -> "
                f"{np.mean(layers[-1]['rel_err_after']):.3f}, tokens per expert {layers[-1]['tokens']}"
            )
    return {"calibration_tokens": int(batches.size), "layers": layers}
