"""Sensitivity measurement (quant/sensitivity.py) on a small converted model: the observer's write reaches the
ops after it, values written back unchanged leave the logits bit for bit, a wrong shape is refused, and the
KLD of small noise on the logits grows with its energy as second-order theory says (4x energy, 4x KLD)."""

from __future__ import annotations

import numpy as np
import pytest
from checkpoints import Spec

from marco_gguf.base.errors import MarcoGGUFError
from marco_gguf.gguf_io.reader import read_header
from marco_gguf.llama.observer import GraphObserver, ObservedModel
from marco_gguf.quant.sensitivity import Noise, measure_gains

pytestmark = pytest.mark.slow

MODEL = Spec(dtype="f32")
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
    noise.target, noise.energy = tensor, 2.5

    def take(node):
        before = node.numpy().astype(np.float64)
        noise.take(node)
        changes.append(float(((node.numpy() - before) ** 2).sum()) / len(TOKENS))

    with ObservedModel(path, GraphObserver(noise.wants, take), n_ctx=64, threads=2) as m:
        m.logits(TOKENS)
    assert changes == [pytest.approx(2.5, rel=1e-3)] and noise.injected == pytest.approx(2.5, rel=1e-6)


@pytest.mark.parametrize("energy", [1e-2, 1.0], ids=["tiny", "small"])
def test_kld_of_noise_on_the_logits_is_second_order(energy, converted):
    """For noise d on the logits, KLD = d'(diag p - pp')d / 2 + O(d^3): 4x the energy gives 4x the KLD."""
    path = converted(MODEL, "q8_0").path
    out = "output.weight" if "output.weight" in tensor_names(path) else "token_embd.weight"
    one, four = measure_gains(path, {out: energy})[out], measure_gains(path, {out: 4 * energy})[out]
    assert one[1] == pytest.approx(energy) and four[1] == pytest.approx(4 * energy)
    assert one[0] > 0 and four[0] / one[0] == pytest.approx(4, rel=0.02)


def tensor_names(path) -> set[str]:
    return {t.name for t in read_header(path).tensors}
