"""Importance matrices: the same numbers as llama.cpp's llama-imatrix and as a float32 transformers forward.

llama-imatrix is built from the vendored source by tests/reftools.py. Both runs use one micro-batch per
chunk (`-b` = `-ub` = `-c`), which is what compute_imatrix does, so every plain MUL_MAT sees the same tokens.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import reftools
from checkpoints import Spec

from marco_gguf.quant.imatrix import compute_imatrix, read_text
from marco_gguf.quant.imatrix_file import read_imatrix, write_imatrix

pytestmark = pytest.mark.slow

MINI = Spec(dtype="f32")  # expert rows of 256, like Marco-Mini's 768 (a multiple of 256)
NANO = Spec(dtype="f32", expert_ff=384)  # Marco-Nano's 384-wide ffn_down_exps rows
CTX, CHUNKS = 64, 6


@pytest.fixture(scope="session")
def calib_text(tmp_path_factory) -> Path:
    """The first part of the built-in calibration text: multilingual prose, chat turns, code and math."""
    text, _ = read_text(None)
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(text[:12000], encoding="utf-8")
    return path


def llama_imatrix(tool, model: Path, text: Path, out: Path, *extra: str) -> Path:
    subprocess.run(
        [
            str(tool("llama-imatrix")),
            "-m",
            str(model),
            "-f",
            str(text),
            "-o",
            str(out),
            "-c",
            str(CTX),
            "-b",
            str(CTX),
            "-ub",
            str(CTX),
            "--chunks",
            str(CHUNKS),
            "-t",
            "2",
            "--no-ppl",
            *reftools.weight_buffers(),
            *extra,
        ],
        check=True,
        capture_output=True,
    )
    return out


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute difference over the tensor's largest magnitude (entries of one tensor share a scale)."""
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


def test_same_imatrix_as_llama_imatrix(converted, llama_tool, calib_text, tmp_path):
    model = converted(MINI, "f32").path
    ref = read_imatrix(llama_imatrix(llama_tool, model, calib_text, tmp_path / "ref.gguf"))
    ours_result = compute_imatrix(
        model, text=calib_text, outfile=tmp_path / "ours.gguf", ctx=CTX, chunks=CHUNKS, threads=2
    )
    ours = read_imatrix(ours_result.path)
    assert sorted(ours.entries) == sorted(ref.entries)
    assert (ours.datasets, ours.chunk_count, ours.chunk_size) == (ref.datasets, ref.chunk_count, ref.chunk_size)
    assert ours.chunk_count == CHUNKS
    for name, r in ref.entries.items():
        o = ours.entries[name]
        assert o.counts.tolist() == r.counts.tolist(), name
        assert relative_error(o.sums, r.sums) <= 1e-4, name


def test_reads_legacy_dat_as_llama_quantize_does(converted, llama_tool, calib_text, tmp_path):
    """The same run saved as .dat ((sum / count) * ncall per entry) normalises to the GGUF file's vectors."""
    model = converted(MINI, "f32").path
    gguf_im = read_imatrix(llama_imatrix(llama_tool, model, calib_text, tmp_path / "a.gguf"))
    dat = read_imatrix(llama_imatrix(llama_tool, model, calib_text, tmp_path / "a.dat", "--output-format", "dat"))
    assert dat.legacy and dat.chunk_count == CHUNKS and dat.datasets == [str(calib_text)]
    for name in gguf_im.entries:
        np.testing.assert_allclose(dat.importance(name), gguf_im.importance(name), rtol=1e-5, err_msg=name)


def test_round_trip_through_our_writer(converted, calib_text, tmp_path):
    r = compute_imatrix(converted(MINI, "f32").path, text=calib_text, ctx=CTX, chunks=2, threads=2)
    back = read_imatrix(write_imatrix(r.imatrix, tmp_path / "x.imatrix.gguf"))
    assert back.entries.keys() == r.imatrix.entries.keys()
    for name, e in r.imatrix.entries.items():
        assert back.entries[name].counts.tolist() == e.counts.tolist()
        np.testing.assert_array_equal(back.entries[name].sums, e.sums.astype(np.float32))


def tokens_of(model: Path, text: str) -> list[int]:
    from marco_gguf.llama.loader import load_model

    llm = load_model(model, vocab_only=True)
    try:
        return llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)  # add_bos = add the model's specials
    finally:
        llm.close()


def transformers_sums(folder: Path, chunks: list[list[int]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Sums of squared inputs of every linear and every expert, from transformers' float32 forward, with
    routing taken from its own router (Qwen3MoeTopKRouter's top-k indices)."""
    import torch
    from transformers import Qwen3MoeForCausalLM

    model = Qwen3MoeForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    sums: dict = defaultdict(lambda: 0.0)
    counts: dict = defaultdict(lambda: 0)

    def dense(name):
        def hook(_module, inputs):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            sums[name] = sums[name] + (x**2).sum(0).numpy()
            counts[name] = counts[name] + np.array([x.shape[0]])

        return hook

    def experts(layer, module):
        def hook(_module, inputs):
            h, idx = inputs[0].double(), inputs[1]
            n = module.num_experts
            for kind in ("gate", "up", "down"):
                sums.setdefault(f"blk.{layer}.ffn_{kind}_exps.weight", np.zeros((n, 1)))
            rows = {k: [] for k in ("in", "down")}
            for e in range(n):
                xs = h[(idx == e).any(-1)]
                gate, up = torch.nn.functional.linear(xs, module.gate_up_proj[e].double()).chunk(2, dim=-1)
                rows["in"].append((xs**2).sum(0).numpy())
                rows["down"].append(((module.act_fn(gate) * up) ** 2).sum(0).numpy())
                counts[f"blk.{layer}.ffn_gate_exps.weight"] = (
                    counts[f"blk.{layer}.ffn_gate_exps.weight"] + np.eye(n, dtype=np.int64)[e] * xs.shape[0]
                )
            for kind, key in (("gate", "in"), ("up", "in"), ("down", "down")):
                sums[f"blk.{layer}.ffn_{kind}_exps.weight"] = sums[f"blk.{layer}.ffn_{kind}_exps.weight"] + np.stack(
                    rows[key]
                )

        return hook

    for i, layer in enumerate(model.model.layers):
        for proj, name in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")):
            getattr(layer.self_attn, proj).register_forward_pre_hook(dense(f"blk.{i}.{name}.weight"))
        layer.mlp.gate.register_forward_pre_hook(dense(f"blk.{i}.ffn_gate_inp.weight"))
        layer.mlp.experts.register_forward_pre_hook(experts(i, layer.mlp.experts))
    with torch.no_grad():
        for chunk in chunks:
            model(torch.tensor([chunk]))
    for i in range(len(model.model.layers)):
        for kind in ("up", "down"):
            counts[f"blk.{i}.ffn_{kind}_exps.weight"] = counts[f"blk.{i}.ffn_gate_exps.weight"]
    return {k: (np.asarray(sums[k]).reshape(-1), np.asarray(counts[k]).reshape(-1)) for k in sums}


def test_matches_transformers_float32_forward(checkpoint, converted, calib_text, tmp_path):
    model = converted(MINI, "f32").path
    r = compute_imatrix(model, text=calib_text, ctx=CTX, chunks=CHUNKS, threads=2, kv_f32=True)
    tokens = tokens_of(model, read_text(calib_text)[0])
    ref = transformers_sums(checkpoint(MINI), [tokens[i * CTX : (i + 1) * CTX] for i in range(CHUNKS)])
    assert sorted(r.imatrix.entries) == sorted(ref)
    for name, (sums, counts) in ref.items():
        e = r.imatrix.entries[name]
        assert e.counts.tolist() == counts.tolist(), name
        assert relative_error(e.sums, sums) <= 1e-3, name
