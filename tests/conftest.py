"""Session fixtures: checkpoints written by transformers and their GGUF conversions, built once per run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import reftools
from checkpoints import Spec, make_checkpoint

from marco_gguf import convert


@pytest.fixture(scope="session")
def vocab_cache(tmp_path_factory) -> Path:
    """A private cache for the rebuilt Qwen3 vocabulary (so a user's ~/.cache is neither read nor written)."""
    return tmp_path_factory.mktemp("vocab-cache")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, vocab_cache):
    """checkpoint(spec) -> folder; each distinct Spec is written once per session."""
    made: dict[Spec, Path] = {}

    def get(spec: Spec) -> Path:
        if spec not in made:
            folder = tmp_path_factory.mktemp("ckpt") / "Marco-Test-Instruct"
            made[spec] = make_checkpoint(folder, spec, cache_dir=vocab_cache)[0]
        return made[spec]

    return get


@pytest.fixture(scope="session")
def converted(tmp_path_factory, checkpoint):
    """converted(spec, preset) -> ConvertResult; cached per (spec, preset)."""
    made: dict = {}

    def get(spec: Spec, preset: str):
        if (spec, preset) not in made:
            out = tmp_path_factory.mktemp("gguf")
            made[spec, preset] = convert(checkpoint(spec), preset=preset, outdir=out, threads=2)
        return made[spec, preset]

    return get


@pytest.fixture(scope="session")
def llamacpp_src() -> Path:
    """llama.cpp's source tree, vendored by the installed llama-cpp-python's sdist (fetched and unpacked once)."""
    return reftools.source_tree()


@pytest.fixture(scope="session")
def llama_tool():
    """llama_tool("llama-quantize") -> path of llama.cpp's own tool, built once per machine from that source."""
    return reftools.tool


@pytest.fixture(scope="session")
def reference_imatrix(converted, llama_tool, tmp_path_factory):
    """imatrix(spec) -> llama-imatrix's file for the spec's F32 GGUF (built-in text, 8 chunks of 128)."""
    from marco_gguf.quant.imatrix import read_text

    made = {}

    def get(spec: Spec):
        if spec not in made:
            folder = tmp_path_factory.mktemp("imatrix")
            text = folder / "calib.txt"
            text.write_text(read_text(None)[0][:30000], encoding="utf-8")
            out = folder / "ref.imatrix.gguf"
            subprocess.run(
                [
                    str(llama_tool("llama-imatrix")),
                    "-m",
                    str(converted(spec, "f32").path),
                    "-f",
                    str(text),
                    "-o",
                    str(out),
                    "-c",
                    "128",
                    "-b",
                    "128",
                    "-ub",
                    "128",
                    "--chunks",
                    "8",
                    "-t",
                    "2",
                    "--no-ppl",
                    *reftools.weight_buffers(),
                ],
                check=True,
                capture_output=True,
            )
            made[spec] = out
        return made[spec]

    return get
