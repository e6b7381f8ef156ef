"""Quantizing with an importance matrix: every tensor byte- and type-identical to `llama-quantize --imatrix`.

Both sides start from the same float32 weights (our F32 GGUF for llama-quantize, the f32 checkpoint for us)
and use the same imatrix, made by llama.cpp's own llama-imatrix on that GGUF.
"""

from __future__ import annotations

import subprocess

import pytest
from checkpoints import Spec
from gguf import GGUFReader

from marco_gguf import convert, load_preset

pytestmark = pytest.mark.slow

MINI = Spec(dtype="f32")  # rows of 256: every K and IQ type applies as chosen
NANO = Spec(dtype="f32", expert_ff=384)  # Marco-Nano's 384-wide ffn_down_exps: the fallbacks
PRESETS = (
    "q4_k_m",
    "q4_k_s",
    "q5_k_m",
    "q6_k",
    "iq4_xs",
    "iq4_nl",
    "q3_k_l",
    "q3_k_m",
    "q3_k_s",
    "q2_k",
    "iq3_m",
    "iq3_xxs",
    "iq2_m",
    "iq2_xs",
)
IMATRIX_KEYS = (
    "quantize.imatrix.file",
    "quantize.imatrix.dataset",
    "quantize.imatrix.entries_count",
    "quantize.imatrix.chunks_count",
    "general.file_type",
)


@pytest.mark.parametrize("spec", [MINI, NANO], ids=["mini-like", "nano-like"])
@pytest.mark.parametrize("preset", PRESETS)
def test_same_tensors_as_llama_quantize(preset, spec, checkpoint, converted, reference_imatrix, llama_tool, tmp_path):
    imatrix = reference_imatrix(spec)
    ref_path = tmp_path / "ref.gguf"
    subprocess.run(
        [
            str(llama_tool("llama-quantize")),
            "--imatrix",
            str(imatrix),
            str(converted(spec, "f32").path),
            str(ref_path),
            load_preset(preset).name,
            "2",
        ],
        check=True,
        capture_output=True,
    )
    ours = GGUFReader(convert(checkpoint(spec), preset=preset, imatrix=imatrix, outdir=tmp_path, threads=2).path)
    ref = GGUFReader(ref_path)
    refs = {t.name: t for t in ref.tensors}
    assert sorted(t.name for t in ours.tensors) == sorted(refs)
    for t in ours.tensors:
        r = refs[t.name]
        assert (t.tensor_type.name, list(t.shape)) == (r.tensor_type.name, list(r.shape)), t.name
        assert bytes(t.data) == bytes(r.data), t.name
    for key in IMATRIX_KEYS:
        assert ours.fields[key].contents() == ref.fields[key].contents(), key
        assert ours.fields[key].types == ref.fields[key].types, key


def test_imatrix_changes_the_bytes(checkpoint, reference_imatrix, tmp_path):
    """A K-quant made with the imatrix differs from the plain one (the vectors reach ggml_quantize_chunk)."""
    with_im = GGUFReader(
        convert(checkpoint(MINI), preset="q4_k_m", imatrix=reference_imatrix(MINI), outdir=tmp_path, threads=2).path
    )
    plain = GGUFReader(convert(checkpoint(MINI), preset="q4_k_m", outdir=tmp_path, threads=2).path)
    a, b = ({t.name: bytes(t.data) for t in r.tensors} for r in (with_im, plain))
    assert a["blk.0.ffn_up_exps.weight"] != b["blk.0.ffn_up_exps.weight"]
    assert a["token_embd.weight"] == b["token_embd.weight"]  # llama-imatrix never collects the tied embeddings
