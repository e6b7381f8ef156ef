"""`upcycle`: dense Qwen3 -> Qwen3-MoE. Whole copies keep the dense model's logits (transformers' float32 forward
of both models, and llama.cpp on our F32 GGUF); drop redraws exactly floor(r * width) rows per expert, seeded;
bad input is one line and writes nothing; the output folder appears whole or not at all."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from checkpoints import DenseSpec, Spec, logits_of, make_dense_checkpoint
from safetensors.numpy import load_file
from test_parity import gguf_logits

from marco_gguf import convert
from marco_gguf.base.errors import OutputError, TensorError, UnsupportedModelError, UpcycleError
from marco_gguf.hf.upcycle import upcycle

N_TOKENS = 48
MAX_REL_ERR = 1e-5  # transformers vs transformers: only the order of float32 sums differs (measured ~4e-7)
MAX_REL_ERR_LLAMA = 1e-4  # llama.cpp's F32 kernels against transformers (measured ~1e-6; test_parity allows 2e-3)


@pytest.fixture(scope="session")
def dense(tmp_path_factory, vocab_cache):
    """dense(spec) -> folder of a small dense Qwen3 written by transformers, once per spec."""
    made: dict[DenseSpec, Path] = {}

    def get(spec: DenseSpec) -> Path:
        if spec not in made:
            made[spec] = make_dense_checkpoint(
                tmp_path_factory.mktemp("dense") / "Qwen3-Test", spec, cache_dir=vocab_cache
            )
        return made[spec]

    return get


def tokens() -> list[int]:
    return [int(t) for t in np.random.default_rng(3).integers(0, 576, N_TOKENS)]  # ranked tokens of the small vocab


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float((np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)).max())


WHOLE_COPY_CASES = [  # (reason, dense spec, experts, top_k)
    ("f32, tied, 8 experts top-2", DenseSpec(), 8, 2),
    ("bf16 shards, untied head, top-k = experts", DenseSpec(dtype="bf16", tied=False, shard_size="300KB"), 4, 4),
    ("one expert, top-1: the dense FFN itself", DenseSpec(layers=3, seed=1), 1, 1),
    ("16 experts top-5 (odd k, renormalised weights)", DenseSpec(seed=2), 16, 5),
]


@pytest.mark.parametrize("reason,spec,experts,top_k", WHOLE_COPY_CASES, ids=[c[0] for c in WHOLE_COPY_CASES])
def test_whole_copies_keep_the_dense_logits_in_transformers(reason, spec, experts, top_k, dense, tmp_path):
    r = upcycle(dense(spec), experts=experts, top_k=top_k, split=1, drop=0.0, outdir=tmp_path / "moe")
    ref, got = logits_of(dense(spec), tokens()).numpy(), logits_of(r.path, tokens()).numpy()
    config = json.loads((r.path / "config.json").read_text())
    assert config["architectures"] == ["Qwen3MoeForCausalLM"] and config["num_experts"] == experts
    print(f"{reason}: max relative error {rel_err(got, ref):.2e}")
    assert rel_err(got, ref) <= MAX_REL_ERR
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("reason,spec,experts,top_k", WHOLE_COPY_CASES[:2], ids=[c[0] for c in WHOLE_COPY_CASES[:2]])
def test_whole_copies_keep_the_dense_logits_in_llama_cpp(reason, spec, experts, top_k, dense, tmp_path):
    r = upcycle(dense(spec), experts=experts, top_k=top_k, outdir=tmp_path / "moe")
    gguf = convert(r.path, preset="f32", outdir=tmp_path, threads=2)
    ref, got = logits_of(dense(spec), tokens()).numpy(), gguf_logits(gguf.path, tokens())
    print(f"{reason}: llama.cpp vs dense transformers, max relative error {rel_err(got, ref):.2e}")
    assert rel_err(got, ref) <= MAX_REL_ERR_LLAMA
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()


def expert_weights(folder: Path, layer: int, e: int) -> dict[str, np.ndarray]:
    w = load_file(str(folder / "model.safetensors"))
    return {p: w[f"model.layers.{layer}.mlp.experts.{e}.{p}.weight"] for p in ("gate_proj", "up_proj", "down_proj")}


DROP_CASES = [  # (reason, split, drop, expected redrawn rows of each expert)
    ("half of whole copies, as the paper's r=0.5", 1, 0.5, 192),
    ("a tenth of quarter slices: floor(0.1 * 96) = 9", 4, 0.1, 9),
    ("0.3 of 192-wide slices: floor(57.6) = 57", 2, 0.3, 57),
    ("all rows redrawn", 2, 1.0, 192),
    ("none redrawn: exact scaled slices", 4, 0.0, 0),
]


@pytest.mark.parametrize("reason,split,drop,expected", DROP_CASES, ids=[c[0] for c in DROP_CASES])
def test_drop_redraws_exactly_that_many_rows_of_each_expert(reason, split, drop, expected, dense, tmp_path):
    src = dense(DenseSpec())
    r = upcycle(src, experts=8, top_k=2, split=split, drop=drop, seed=5, outdir=tmp_path / "moe")
    assert r.dropped_rows == expected and r.expert_ff == 384 // split
    d = load_file(str(src / "model.safetensors"))
    scale = np.float32(split ** (1 / 3))
    for layer in range(2):
        full = {p: d[f"model.layers.{layer}.mlp.{p}.weight"] for p in ("gate_proj", "up_proj", "down_proj")}
        for e in range(8):
            w, lo = expert_weights(r.path, layer, e), (e % split) * r.expert_ff
            kept = {
                "gate_proj": full["gate_proj"][lo : lo + r.expert_ff] * scale,
                "up_proj": full["up_proj"][lo : lo + r.expert_ff] * scale,
                "down_proj": (full["down_proj"][:, lo : lo + r.expert_ff] * scale).T,
            }
            changed = {p: set(np.flatnonzero((w[p].T if p == "down_proj" else w[p]) != kept[p]).tolist()) for p in w}
            rows = {p: {i // 128 for i in s} for p, s in changed.items()}  # flat index -> intermediate row
            assert len(rows["gate_proj"]) == expected, f"layer {layer} expert {e}"
            assert rows["gate_proj"] == rows["up_proj"] == rows["down_proj"]  # one index set per expert


def test_redrawn_rows_follow_the_dense_matrix_statistics(dense, tmp_path):
    """Drop-Upcycling redraws from normal(mean, std) of the original matrix: the redrawn values show them."""
    src = dense(DenseSpec())
    r = upcycle(src, experts=4, top_k=2, split=1, drop=1.0, outdir=tmp_path / "moe")
    d = load_file(str(src / "model.safetensors"))
    for p in ("gate_proj", "up_proj", "down_proj"):
        orig = d[f"model.layers.0.mlp.{p}.weight"]
        new = np.stack([expert_weights(r.path, 0, e)[p] for e in range(4)])
        assert (new != orig).all()  # every value redrawn
        assert abs(new.mean() - orig.mean()) < 0.01 * orig.std()  # 196,608 draws: standard error 0.0023 std
        assert abs(new.std() / orig.std() - 1) < 0.01


def test_scaled_slices_router_and_config(dense, tmp_path):
    src = dense(DenseSpec())
    r = upcycle(src, experts=8, top_k=4, split=4, seed=1, outdir=tmp_path / "moe")
    assert r.scale == pytest.approx(4 ** (1 / 3))
    d, w = load_file(str(src / "model.safetensors")), load_file(str(r.path / "model.safetensors"))
    gate = d["model.layers.1.mlp.gate_proj.weight"]
    for e in range(8):  # expert e holds slice e % 4, scaled by 4^(1/3)
        s = e % 4
        np.testing.assert_array_equal(
            w[f"model.layers.1.mlp.experts.{e}.gate_proj.weight"], gate[96 * s : 96 * (s + 1)] * np.float32(r.scale)
        )
    router = np.stack([w[f"model.layers.{i}.mlp.gate.weight"] for i in range(2)])
    assert router.shape == (2, 8, 128) and abs(router.std() - 0.02) < 0.001  # transformers' initializer_range
    assert not np.array_equal(router[0], router[1])  # seeded per layer
    config = json.loads((r.path / "config.json").read_text())
    assert {k: config[k] for k in ("num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob")} == {
        "num_experts_per_tok": 4,
        "moe_intermediate_size": 96,
        "norm_topk_prob": True,
    }
    assert config["marco_upcycle"] == {"source": "Qwen3-Test", "split": 4, "drop": 0.0, "seed": 1}
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= {f.name for f in r.path.iterdir()}


def test_same_seed_same_bytes_other_seed_other_rows(dense, tmp_path):
    src = dense(DenseSpec())
    a, b, c = (
        upcycle(src, experts=4, top_k=2, split=2, drop=0.25, seed=s, outdir=tmp_path / n)
        for s, n in ((7, "a"), (7, "b"), (8, "c"))
    )
    assert (a.path / "model.safetensors").read_bytes() == (b.path / "model.safetensors").read_bytes()
    assert (a.path / "model.safetensors").read_bytes() != (c.path / "model.safetensors").read_bytes()


def edited_config(src: Path, dst: Path, **changes) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        os.symlink(f, dst / f.name)
    config = json.loads((src / "config.json").read_text())
    (dst / "config.json").unlink()
    (dst / "config.json").write_text(json.dumps({**config, **changes}))
    return dst


REFUSALS = [  # (reason, source maker, options, error type, message part)
    ("a Qwen3-MoE is not dense", "moe", {}, UnsupportedModelError, "is not Qwen3ForCausalLM (already a mixture"),
    ("a llama model", "llama", {}, UnsupportedModelError, "['LlamaForCausalLM'] is not Qwen3ForCausalLM"),
    ("split 5 does not divide 384", "dense", {"split": 5, "experts": 10}, UpcycleError, "does not divide"),
    ("6 experts, split 4", "dense", {"split": 4, "experts": 6}, UpcycleError, "--experts 6 is not a multiple of"),
    ("top-k above the experts", "dense", {"top_k": 9}, UpcycleError, "--top-k 9 must be from 1 to --experts (8)"),
    ("top-k 0", "dense", {"top_k": 0}, UpcycleError, "--top-k 0 must be from 1"),
    ("no experts", "dense", {"experts": 0}, UpcycleError, "--experts 0: need at least 1"),
    ("drop above 1", "dense", {"drop": 1.5}, UpcycleError, "--drop 1.5 is not a fraction from 0 to 1"),
    ("negative seed", "dense", {"seed": -1}, UpcycleError, "--seed -1 is negative"),
    ("config and weights disagree", "ff192", {}, TensorError, "config.json implies [192, 128]"),
    ("not a folder", "missing", {}, UpcycleError, "not a folder"),
]


@pytest.mark.parametrize("reason,maker,options,error,part", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_refusals_are_one_line_and_write_nothing(reason, maker, options, error, part, dense, checkpoint, tmp_path):
    src = {
        "moe": lambda: checkpoint(Spec()),
        "llama": lambda: edited_config(dense(DenseSpec()), tmp_path / "llama", architectures=["LlamaForCausalLM"]),
        "dense": lambda: dense(DenseSpec()),
        "ff192": lambda: edited_config(dense(DenseSpec()), tmp_path / "ff", intermediate_size=192),
        "missing": lambda: tmp_path / "nothing-here",
    }[maker]()
    out = tmp_path / "out" / "moe"
    with pytest.raises(error) as info:
        upcycle(src, **{"experts": 8, "top_k": 2, **options}, outdir=out)
    assert part in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


class Interrupt(BaseException):
    pass


def interrupt_midway(event) -> None:
    if event.done > event.total / 2:
        raise Interrupt


def test_output_folder_is_atomic(dense, tmp_path):
    src, out = dense(DenseSpec()), tmp_path / "deep" / "moe"
    with pytest.raises(Interrupt):  # Ctrl-C halfway: no folder, no hidden leftovers, no parents made
        upcycle(src, experts=4, top_k=2, outdir=out, progress=interrupt_midway)
    assert not (tmp_path / "deep").exists()
    first = upcycle(src, experts=4, top_k=2, outdir=out)
    before = {f.name: f.read_bytes() for f in first.path.iterdir()}
    with pytest.raises(OutputError, match="already exists"):
        upcycle(src, experts=8, top_k=2, outdir=out)
    with pytest.raises(Interrupt):  # an interrupted --force keeps the old folder whole
        upcycle(src, experts=8, top_k=2, outdir=out, force=True, progress=interrupt_midway)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["moe"]
    upcycle(src, experts=8, top_k=2, outdir=out, force=True)
    assert json.loads((out / "config.json").read_text())["num_experts"] == 8
    assert sorted(p.name for p in out.parent.iterdir()) == ["moe"]


def test_shards_and_index_for_a_large_output(dense, tmp_path):
    r = upcycle(dense(DenseSpec()), experts=8, top_k=2, outdir=tmp_path / "moe", max_shard_bytes=3_000_000)
    index = json.loads((r.path / "model.safetensors.index.json").read_text())
    assert r.n_shards == len(set(index["weight_map"].values())) > 1
    assert index["metadata"]["total_size"] == r.size_bytes == 4 * r.n_parameters  # f32
    assert sum(math.prod(v.shape) for f in r.path.glob("*.safetensors") for v in load_file(str(f)).values()) == (
        r.n_parameters
    )


def test_cli_json_and_one_line_error(dense, tmp_path):
    cli = [sys.executable, "-m", "marco_gguf", "upcycle", str(dense(DenseSpec()))]
    ok = subprocess.run(
        [*cli, "--experts", "8", "--top-k", "2", "--split", "2", "--drop", "0.5", "-o", str(tmp_path / "m"), "--json"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert (result["experts"], result["expert_ff"], result["dropped_rows"]) == (8, 192, 96)
    bad = subprocess.run(
        [*cli, "--experts", "6", "--top-k", "2", "--split", "4", "-o", str(tmp_path / "n")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "--experts 6 is not a multiple of --split 4" in bad.stderr
