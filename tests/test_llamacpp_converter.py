"""Key-for-key, byte-for-byte parity with llama.cpp's own convert_hf_to_gguf.py on the same checkpoint.

llama.cpp's source comes from the installed llama-cpp-python's sdist (tests/reftools.py fetches and
unpacks it once per machine). The reference converter runs in a subprocess with torch and transformers.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from checkpoints import Spec
from gguf import GGUFReader, GGUFValueType

from marco_gguf import __version__

pytestmark = pytest.mark.slow

CASES = [  # (reason, spec, preset == llama.cpp --outtype)
    ("F32, per-expert bf16 shards", Spec(vocab="qwen3"), "f32"),
    ("F16, per-expert bf16 shards", Spec(vocab="qwen3"), "f16"),
    ("BF16, per-expert bf16 shards", Spec(vocab="qwen3"), "bf16"),
    ("Q8_0 (gguf-py's NumPy Q8_0 vs ggml's C one)", Spec(vocab="qwen3"), "q8_0"),
    ("Q8_0, transformers-5 fused experts", Spec(vocab="qwen3", layout="fused"), "q8_0"),
    ("F32, transformers-4.x config spelling", Spec(vocab="qwen3", config_style="4.x", dtype="f32"), "f32"),
]


# Keys marco-gguf writes on purpose and llama.cpp's converter does not; every other key must be identical.
EXTRA_KEYS = (
    "general.quantized_by",  # "marco-gguf <version>": LM Studio and Ollama show who made the file
)


def metadata(reader: GGUFReader) -> dict:
    return {f.name: (f.types, f.contents()) for f in reader.fields.values() if not f.name.startswith("GGUF.")}


@pytest.mark.parametrize("reason,spec,preset", CASES, ids=[c[0] for c in CASES])
def test_same_file_as_llama_cpp_converter(reason, spec, preset, checkpoint, converted, llamacpp_src, tmp_path):
    ref_path = tmp_path / "ref.gguf"
    subprocess.run(
        [
            sys.executable,
            str(llamacpp_src / "convert_hf_to_gguf.py"),
            str(checkpoint(spec)),
            "--outtype",
            preset,
            "--outfile",
            str(ref_path),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    ours, ref = GGUFReader(converted(spec, preset).path), GGUFReader(ref_path)
    ours_kv = metadata(ours)
    extra = {k: ours_kv.pop(k) for k in EXTRA_KEYS}
    assert ours_kv == metadata(ref)
    assert extra == {"general.quantized_by": ([GGUFValueType.STRING], f"marco-gguf {__version__}")}
    ref_tensors = {t.name: t for t in ref.tensors}
    assert sorted(t.name for t in ours.tensors) == sorted(ref_tensors)  # its order follows the shards
    for t in ours.tensors:
        r = ref_tensors[t.name]
        assert (t.tensor_type, list(t.shape)) == (r.tensor_type, list(r.shape)), t.name
        assert bytes(t.data) == bytes(r.data), t.name
