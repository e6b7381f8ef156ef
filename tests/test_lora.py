"""LoRA adapters made by PEFT: merged while converting (against PEFT's merge_and_unload in float32), and refused
with one line when they do not fit the base."""

from __future__ import annotations

import subprocess
import sys

import llama_cpp
import numpy as np
import pytest
from adapters import Adapter, make_adapter, merged_logits, peft_logits
from checkpoints import Spec, reference_logits
from gguf import GGUFReader
from test_parity import MAX_REL_ERR, gguf_logits

from marco_gguf.convert import convert
from marco_gguf.gguf_io.lora_gguf import write_lora_gguf
from marco_gguf.llama.lora import Adapters, LoraFile

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


# --- GGUF adapters: the vendored convert_lora_to_gguf.py's file, and llama.cpp applying it ---

SCRIPT_CASES = [  # (reason, adapter, outtype): adapters the script converts correctly
    ("attention adapter, F32", Adapter(), "f32"),
    ("attention adapter, F16", Adapter(), "f16"),
    ("attention adapter, BF16", Adapter(), "bf16"),
    ("attention adapter, Q8_0 (lora_b rows of rank 4 fall back to F16)", Adapter(), "q8_0"),
    ("rank_pattern: per-module ranks, one alpha", Adapter(rank_pattern=(("k_proj", 2),), seed=4), "f16"),
    ("rank 32: Q8_0 lora_b too", Adapter(("q_proj", "v_proj"), r=32, alpha=16.0, seed=5), "q8_0"),
]


@pytest.mark.slow
@pytest.mark.parametrize("reason,spec,outtype", SCRIPT_CASES, ids=[c[0] for c in SCRIPT_CASES])
def test_lora_gguf_byte_identical_to_convert_lora_to_gguf(
    reason, spec, outtype, checkpoint, adapter, llamacpp_src, tmp_path
):
    base, folder = checkpoint(BASE), adapter(spec)
    ref = tmp_path / "ref.gguf"
    cmd = [sys.executable, str(llamacpp_src / "convert_lora_to_gguf.py"), str(folder), "--base", str(base)]
    subprocess.run([*cmd, "--outtype", outtype, "--outfile", str(ref)], check=True, capture_output=True, cwd=tmp_path)
    ours = write_lora_gguf(folder, base=base, outfile=tmp_path / "ours.gguf", outtype=outtype)
    assert ours.path.read_bytes() == ref.read_bytes()
    assert not ours.folded_scales


def adapter_logits(model, adapter_path, tokens: list[int], scale: float) -> np.ndarray:
    llm = llama_cpp.Llama(str(model), n_ctx=256, logits_all=True, type_k=0, type_v=0, verbose=False, n_threads=2)
    adapters = Adapters(llm.model, model, [LoraFile(adapter_path, scale)])
    adapters.apply(llm.ctx)
    llm.eval(tokens)
    scores = np.array(llm.scores[: len(tokens)])
    adapters.close()
    llm.close()
    return scores


APPLIED = [c for c in ADAPTERS if not c[1].modules_to_save]


@pytest.mark.slow
@pytest.mark.parametrize("reason,spec", APPLIED, ids=[c[0] for c in APPLIED])
def test_gguf_adapter_in_llama_cpp_equals_peft_model(reason, spec, checkpoint, converted, adapter, tmp_path):
    base, folder = checkpoint(BASE), adapter(spec)
    gguf_adapter = write_lora_gguf(folder, base=base, outfile=tmp_path / "a.gguf").path
    model = converted(BASE, "f32").path
    ref = peft_logits(base, folder, tokens()).numpy()
    got = adapter_logits(model, gguf_adapter, tokens(), 1.0)
    print(f"{reason}: rel err {rel_err(got, ref):.3e}")
    assert rel_err(got, ref) <= MAX_REL_ERR
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()
    # scale 0: the base model's logits, as without the adapter
    base_ref = reference_logits(base, tokens()).numpy()
    assert rel_err(adapter_logits(model, gguf_adapter, tokens(), 0.0), base_ref) <= MAX_REL_ERR
