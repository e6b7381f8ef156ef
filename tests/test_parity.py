"""Exactness against references nobody here wrote: transformers' float32 forward and llama.cpp's quantizer."""

from __future__ import annotations

import ctypes
import unicodedata

import llama_cpp
import numpy as np
import pytest
from checkpoints import Spec, reference_logits
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from tokenizer_texts import TEXTS

from marco_gguf.llama.loader import load_model

N_TOKENS = 64
MAX_REL_ERR = 2e-3  # the bound; measured errors are ~1e-6 (F32 weights, F32 KV cache)

LOGIT_CASES = [
    ("bf16 shards, real Qwen3 vocabulary", Spec(vocab="qwen3")),
    ("f32 single file, 3 layers", Spec(dtype="f32", shard_size=None, layers=3)),
    ("transformers-5 fused expert tensors", Spec(layout="fused")),
    ("transformers-4.x config spelling", Spec(config_style="4.x")),
    ("untied output head (output.weight written)", Spec(tied=False, seed=1)),
    ("tied checkpoint that still stores lm_head.weight (dropped)", Spec(lm_head="same", shard_size=None)),
]


def gguf_logits(path, tokens: list[int]) -> np.ndarray:
    # F32 KV cache: llama.cpp's default F16 cache alone costs ~1e-3 relative error
    llm = llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, type_k=0, type_v=0, verbose=False, n_threads=2)
    llm.eval(tokens)
    scores = np.array(llm.scores[: len(tokens)])
    llm.close()
    return scores


@pytest.mark.slow
@pytest.mark.parametrize("reason,spec", LOGIT_CASES, ids=[c[0] for c in LOGIT_CASES])
def test_f32_gguf_logits_equal_transformers(reason, spec, checkpoint, converted):
    result = converted(spec, "f32")
    vocab = 151643 if spec.vocab == "qwen3" else 576  # ordinary (ranked) tokens only
    tokens = [int(t) for t in np.random.default_rng(7).integers(0, vocab, N_TOKENS)]
    ref = reference_logits(checkpoint(spec), tokens).numpy()
    got = gguf_logits(result.path, tokens)
    rel = np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)
    print(f"{reason}: max relative error {rel.max():.3e} over {N_TOKENS} positions")
    assert rel.max() <= MAX_REL_ERR
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()
    names = {t.name for t in GGUFReader(result.path).tensors}
    assert ("output.weight" in names) == (not spec.tied)


def llama_quantize(src, dst, ftype: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = ftype, 2
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0


MINI_LIKE = Spec(layers=8, experts=16, expert_ff=512, shard_size="20MB")  # expert rows a multiple of 256
NANO_LIKE = Spec(layers=8, experts=16, expert_ff=384, shard_size="20MB")  # Marco-Nano's 384: no K-quant rows

IDENTITY_CASES = [  # (reason, spec, preset, llama_ftype)
    ("F16 from a bf16 checkpoint", Spec(), "f16", 1),
    ("BF16 from a bf16 checkpoint (lossless)", Spec(), "bf16", 32),
    ("Q8_0 from a bf16 checkpoint", Spec(), "q8_0", 7),
    ("F16 from an f32 checkpoint", Spec(dtype="f32", shard_size=None), "f16", 1),
    ("BF16 from an f32 checkpoint (rounding)", Spec(dtype="f32", shard_size=None), "bf16", 32),
    ("Q8_0 from an f32 checkpoint", Spec(dtype="f32", shard_size=None), "q8_0", 7),
    ("Q8_0 with fused experts", Spec(layout="fused"), "q8_0", 7),
    ("Q4_K_M, Marco-Mini-like widths, 8 layers (more_bits visible)", MINI_LIKE, "q4_k_m", 15),
    ("Q4_K_S, Marco-Mini-like widths, 8 layers", MINI_LIKE, "q4_k_s", 14),
    ("Q5_K_M, Marco-Mini-like widths, 8 layers", MINI_LIKE, "q5_k_m", 17),
    ("Q6_K, Marco-Mini-like widths, 8 layers", MINI_LIKE, "q6_k", 18),
    ("Q4_K_M, Marco-Nano-like 384-wide experts (Q5_0/Q8_0 fallbacks)", NANO_LIKE, "q4_k_m", 15),
    ("Q4_K_S, Marco-Nano-like 384-wide experts", NANO_LIKE, "q4_k_s", 14),
    ("Q6_K, Marco-Nano-like 384-wide experts", NANO_LIKE, "q6_k", 18),
    ("Q4_K_M, untied output head (output Q6_K, token_embd Q4_K)", Spec(tied=False, layers=3), "q4_k_m", 15),
    ("Q4_K_M, 8 experts (llama.cpp's n_expert == 8 rules)", Spec(experts=8, top_k=2), "q4_k_m", 15),
    ("Q4_K_S, 8 experts", Spec(experts=8, top_k=2), "q4_k_s", 14),
]


@pytest.mark.parametrize("reason,spec,preset,ftype", IDENTITY_CASES, ids=[c[0] for c in IDENTITY_CASES])
def test_presets_byte_identical_to_llama_model_quantize(reason, spec, preset, ftype, converted, tmp_path):
    ours = GGUFReader(converted(spec, preset).path)
    ref_path = tmp_path / "ref.gguf"
    llama_quantize(converted(spec, "f32").path, ref_path, ftype)
    ref = {t.name: t for t in GGUFReader(ref_path).tensors}
    assert sorted(t.name for t in ours.tensors) == sorted(ref)  # llama-quantize reorders; order is not meaningful
    for t in ours.tensors:
        r = ref[t.name]
        assert (t.tensor_type, list(t.shape)) == (r.tensor_type, list(r.shape)), t.name
        assert bytes(t.data) == bytes(r.data), f"{t.name}: bytes differ from llama.cpp's {r.tensor_type.name}"
    kinds = {t.name: t.tensor_type for t in ours.tensors}
    assert kinds["blk.0.ffn_gate_inp.weight"] == Q.F32 and kinds["blk.0.attn_q_norm.weight"] == Q.F32
    assert ours.fields["general.file_type"].contents() == ftype


@pytest.fixture(scope="module")
def real_vocab(converted, checkpoint):
    from tokenizers import Tokenizer

    spec = Spec(vocab="qwen3")
    hf = Tokenizer.from_file(str(checkpoint(spec) / "tokenizer.json"))
    llm = load_model(converted(spec, "q8_0").path, vocab_only=True)
    yield hf, llm
    llm.close()


@pytest.mark.slow
@pytest.mark.parametrize("reason,text", TEXTS, ids=[r for r, _ in TEXTS])
def test_tokenizer_parity_with_hf_tokenizers(reason, text, real_vocab):
    """llama.cpp's tokenizer on our GGUF == HF tokenizers on the same tokenizer.json."""
    hf, llm = real_vocab
    # llama.cpp's BPE has no NFC normalizer (Qwen's tokenizer.json has one): NFD input must be
    # normalized by the caller, as marco-gguf's runtime does; this keeps that difference visible
    nfc = unicodedata.normalize("NFC", text)
    assert llm.tokenize(nfc.encode(), add_bos=False, special=True) == hf.encode(text, add_special_tokens=False).ids
    if nfc != text:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) != hf.encode(text, add_special_tokens=False).ids
