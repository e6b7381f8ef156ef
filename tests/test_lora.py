"""LoRA adapters made by PEFT: merged while converting (against PEFT's merge_and_unload in float32), and refused
with one line when they do not fit the base."""

from __future__ import annotations

import numpy as np
import pytest
from adapters import Adapter, make_adapter, merged_logits
from checkpoints import Spec, reference_logits
from gguf import GGUFReader
from test_parity import MAX_REL_ERR, gguf_logits

from marco_gguf.convert import convert

N_TOKENS = 48
BASE = Spec(seed=3)
EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")

ADAPTERS = [
    ("attention q/k/v/o", Adapter()),
    ("router and fused experts (target_parameters) plus q_proj", Adapter(("q_proj", "gate"), EXPERTS, seed=1)),
    ("rsLoRA, rank 8, alpha 4", Adapter(("v_proj", "o_proj"), r=8, alpha=4.0, use_rslora=True, seed=2)),
    ("modules_to_save: a retrained embedding on a tied base", Adapter(("v_proj",), modules_to_save=("embed_tokens",))),
    (
        "rank_pattern and alpha_pattern per module",
        Adapter(rank_pattern=(("k_proj", 2),), alpha_pattern=(("o_proj", 32.0),)),
    ),
]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, checkpoint):
    made: dict = {}

    def get(a: Adapter):
        if a not in made:
            made[a] = make_adapter(checkpoint(BASE), tmp_path_factory.mktemp("adapter") / "my-adapter", a)
        return made[a]

    return get


def tokens() -> list[int]:
    return [int(t) for t in np.random.default_rng(11).integers(0, 576, N_TOKENS)]


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float((np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)).max())


@pytest.mark.slow
@pytest.mark.parametrize("reason,spec", ADAPTERS, ids=[c[0] for c in ADAPTERS])
def test_merged_f32_gguf_logits_equal_peft_merge_and_unload(reason, spec, checkpoint, adapter, tmp_path):
    base, folder = checkpoint(BASE), adapter(spec)
    result = convert(base, preset="f32", lora=folder, outdir=tmp_path, threads=2)
    ref = merged_logits(base, folder, tokens()).numpy()
    got = gguf_logits(result.path, tokens())
    moved = rel_err(reference_logits(base, tokens()).numpy(), ref)
    print(f"{reason}: rel err {rel_err(got, ref):.3e}; the adapter moves the logits by {moved:.3e}")
    assert moved > 100 * MAX_REL_ERR  # the adapter matters, so equality is not the base's
    assert rel_err(got, ref) <= MAX_REL_ERR
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()
    fields = GGUFReader(result.path).fields
    assert fields["general.lora.name"].contents() == "my-adapter"
    assert result.path.name == f"{base.name}-my-adapter-F32.gguf"
