"""`demo()`: the offline end-to-end run behind the README's first command.

Synthesizes a tiny RANDOM-WEIGHT Marco-shaped checkpoint, converts it, loads the GGUF in
llama-cpp-python and generates a few tokens. The text is noise; the point is that every stage
(checkpoint layout, conversion, loading, generation) works on this machine, and how fast.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from .convert import ConvertResult, convert
from .runtime import GenerationStats, generate, load_model
from .synth import SynthResult, synthesize

DEMO_PROMPT = "<|im_start|>user\nWhat is a mixture of experts?<|im_end|>\n<|im_start|>assistant\n"


@dataclass(frozen=True)
class DemoResult:
    checkpoint: SynthResult
    conversion: ConvertResult
    text: str
    stats: GenerationStats


def demo(*, workdir: str | Path | None = None, preset: str = "q8_0", max_tokens: int = 24, threads: int | None = None,
         progress=None) -> DemoResult:
    """Synthesize, convert and run a tiny random-weight Marco; files go to `workdir` (default: a temp dir)."""
    with tempfile.TemporaryDirectory(prefix="marco-gguf-demo-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        ckpt = synthesize(root / "Marco-Tiny-Random", shape="tiny", vocab="small", seed=0)
        result = convert(ckpt.path, preset=preset, outdir=root, threads=threads, force=True, progress=progress)
        llm = load_model(result.path, n_ctx=512, threads=threads)
        text, stats = generate(llm, DEMO_PROMPT, max_tokens=max_tokens)
        llm.close()
    return DemoResult(ckpt, result, text, stats)
