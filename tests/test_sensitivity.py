"""Sensitivity measurement (quant/sensitivity.py) on a small converted model: the observer's write reaches the
ops after it, values written back unchanged leave the logits bit for bit, a wrong shape is refused, and the
KLD of small noise on the logits grows with its energy as second-order theory says (4x energy, 4x KLD), and an
embedding's lookup gets its reference type's real error."""

from __future__ import annotations

import numpy as np
import pytest
from checkpoints import Spec
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf.quants import dequantize

from marco_gguf.base.errors import MarcoGGUFError
from marco_gguf.llama.ggml import dequantize_rows, quantize_rows
from marco_gguf.llama.observer import GraphObserver, ObservedModel
from marco_gguf.quant.imatrix import read_text
from marco_gguf.quant.sensitivity import CTX, Noise, measure_gains

pytestmark = pytest.mark.slow

MODEL = Spec(dtype="f32")
UNTIED = Spec(dtype="f32", tied=False)
TOKENS = list(range(10, 74))


def logits(path, take=None) -> np.ndarray:
    wants = (lambda node: node.op in ("MUL_MAT", "MUL_MAT_ID")) if take else (lambda node: False)
    with ObservedModel(path, GraphObserver(wants, take or (lambda node: None)), n_ctx=64, threads=2) as m:
        return m.logits(TOKENS)


def test_values_written_back_unchanged_leave_the_logits(converted):
    path = converted(MODEL, "q8_0").path
    assert np.array_equal(logits(path, lambda node: node.write(node.numpy())), logits(path))


def test_a_write_changes_what_follows(converted):
    path = converted(MODEL, "q8_0").path
    changed = logits(path, lambda node: node.write(node.numpy() * 1.01))
    assert not np.allclose(changed, logits(path), rtol=0, atol=1e-6)


def test_a_write_of_the_wrong_shape_is_refused(converted):
    path = converted(MODEL, "q8_0").path
    with pytest.raises(MarcoGGUFError, match=r"graph tensor .*\(3,\) values for a tensor of"):
        logits(path, lambda node: node.write(np.zeros(3, dtype=np.float32)))


NOISED = [  # (reason, tensor)
    ("a dense product: llama.cpp's MUL_MAT, tokens on its second axis", "blk.0.attn_v.weight"),
    ("an expert stack: MUL_MAT_ID, one row per token and expert slot", "blk.1.ffn_down_exps.weight"),
    ("the output matrix: the noise is the logits' change", "token_embd.weight"),
]


@pytest.mark.parametrize("reason,tensor", NOISED, ids=[n[0] for n in NOISED])
def test_the_noise_has_the_energy_per_token_asked_for(reason, tensor, converted):
    """Read back from llama.cpp after the write: the node changed by `energy` per token, counted independently."""
    path, noise, changes = converted(MODEL, "q8_0").path, Noise(), []
    noise.aim({tensor: (Q.Q4_K, 2.5)})

    def take(node):
        before = node.numpy().astype(np.float64)
        noise.take(node)
        if node.op != "GET_ROWS":  # the embedding's lookup: its own test below
            changes.append(float(((node.numpy() - before) ** 2).sum()) / len(TOKENS))

    with ObservedModel(path, GraphObserver(noise.wants, take), n_ctx=64, threads=2) as m:
        m.logits(TOKENS)
    assert changes == [pytest.approx(2.5, rel=1e-3)] and noise.injected == pytest.approx(2.5, rel=1e-6)


@pytest.mark.parametrize("energy", [1e-2, 1.0], ids=["tiny", "small"])
def test_kld_of_noise_on_the_logits_is_second_order(energy, converted):
    """For noise d on the logits, KLD = d'(diag p - pp')d / 2 + O(d^3): 4x the energy gives 4x the KLD."""
    path, out = converted(UNTIED, "q8_0").path, "output.weight"  # tied, its lookup would add its own error
    one, four = measure_gains(path, {out: (Q.Q4_K, energy)})[out], measure_gains(path, {out: (Q.Q4_K, 4 * energy)})[out]
    assert one[1] == pytest.approx(energy) and four[1] == pytest.approx(4 * energy)
    assert one[0] > 0 and four[0] / one[0] == pytest.approx(4, rel=0.02)


LOOKUPS = [  # (reason, spec)
    ("a tied embedding: looked up, and the output's product", MODEL),
    ("an untied embedding: looked up only", UNTIED),
]


@pytest.mark.parametrize("reason,spec", LOOKUPS, ids=[n[0] for n in LOOKUPS])
def test_an_embeddings_lookup_gets_its_real_error(reason, spec, converted):
    """The looked-up rows become exactly what the reference type stores for them (ggml's quantize and
    dequantize), and the pass's energy is that error per token unless a product had noise of its own."""
    path, noise, seen = converted(spec, "q8_0").path, Noise(), []
    noise.aim({"token_embd.weight": (Q.Q4_K, 2.5)})

    def take(node):
        before = node.numpy()
        noise.take(node)
        if node.op == "GET_ROWS":
            flat = before.reshape(-1, before.shape[-1])
            want = dequantize_rows(Q.Q4_K, quantize_rows(Q.Q4_K, flat), flat.shape[1])
            seen.append(float(((want - flat).astype(np.float64) ** 2).sum()) / len(TOKENS))
            assert np.array_equal(node.numpy().reshape(flat.shape), want)

    with ObservedModel(path, GraphObserver(noise.wants, take), n_ctx=64, threads=2) as m:
        m.logits(TOKENS)
    assert len(seen) == 1 and seen[0] > 0 and noise.looked_up == pytest.approx(seen[0], rel=1e-9)
    assert noise.injected == pytest.approx(2.5 if spec.tied else 0.0, rel=1e-6)
    [(kld, energy)] = measure_gains(path, {"token_embd.weight": (Q.Q4_K, 2.5)}).values()
    assert kld > 0 and energy == pytest.approx(2.5 if spec.tied else lookup_error(path), rel=1e-6)


def lookup_error(path) -> float:
    """The Q4_K error per token of the embedding rows measure_gains looks up, from the file's own rows."""
    [embd] = [t for t in GGUFReader(path).tensors if t.name == "token_embd.weight"]
    table = dequantize(embd.data, embd.tensor_type).astype(np.float32)
    with ObservedModel(path, GraphObserver(lambda node: False, lambda node: None), n_ctx=CTX, threads=2) as m:
        rows = np.ascontiguousarray(table[m.tokenize(read_text(None)[0])[:CTX]])
    back = dequantize_rows(Q.Q4_K, quantize_rows(Q.Q4_K, rows), rows.shape[1])
    return float(((back - rows).astype(np.float64) ** 2).sum()) / len(rows)
