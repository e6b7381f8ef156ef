"""`demo()`: the offline end-to-end run behind the README's first command.

Synthesizes a tiny RANDOM-WEIGHT Marco-shaped checkpoint, converts it, loads the GGUF in
llama-cpp-python and generates a few tokens. The text is noise; the point is that every stage
(checkpoint layout, conversion, loading, generation) works on this machine, and how fast.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from marco_gguf.convert import ConvertResult, convert
from marco_gguf.llama.session import ChatSession, GenerationStats
from marco_gguf.synth.model import SynthResult, synthesize

DEMO_QUESTION = "What is a mixture of experts?"


@dataclass(frozen=True)
class DemoResult:
    checkpoint: SynthResult
    conversion: ConvertResult
    text: str
    stats: GenerationStats


def demo(
    *,
    workdir: str | Path | None = None,
    preset: str = "q8_0",
    max_tokens: int = 24,
    threads: int | None = None,
    progress=None,
) -> DemoResult:
    """Synthesize, convert and run a tiny random-weight Marco; files go to `workdir` (default: a temp dir)."""
    with tempfile.TemporaryDirectory(prefix="marco-gguf-demo-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        ckpt = synthesize(root / "Marco-Tiny-Random", shape="tiny", vocab="small", seed=0)
        result = convert(ckpt.path, preset=preset, outdir=root, threads=threads, force=True, progress=progress)
        with ChatSession(result.path, ctx=512, threads=threads, sampling={"seed": 0}, max_tokens=max_tokens) as session:
            reply = session.send(DEMO_QUESTION).wait()
    return DemoResult(ckpt, result, reply.text, reply.stats)
