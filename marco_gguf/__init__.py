"""marco-gguf: Marco-MoE checkpoints -> GGUF for llama.cpp, Ollama and LM Studio.

Public API: `convert()` and its `ConvertResult`, `synthesize()`, `demo()`, `load_preset()`, `ChatSession`, `serve()`,
and the typed errors in `marco_gguf.errors`; `marco_gguf.bench.bench()` is the benchmark.
"""
from importlib.metadata import PackageNotFoundError, version

from .convert import ConvertResult, convert
from .demo import DemoResult, demo
from .presets import Preset, builtin_presets, load_preset
from .runtime import ChatSession
from .server import serve
from .synth import SynthResult, synthesize

try:
    __version__ = version("marco-gguf")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"

__all__ = ["convert", "ConvertResult", "demo", "DemoResult", "synthesize", "SynthResult", "load_preset", "Preset",
           "builtin_presets", "ChatSession", "serve", "__version__"]
