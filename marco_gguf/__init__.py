"""marco-gguf: Marco-MoE checkpoints -> GGUF for llama.cpp, Ollama and LM Studio.

Public API: `convert()` and its `ConvertResult`, `synthesize()`, `demo()`, `load_preset()`, `ChatSession`, `serve()`,
`expert_usage()` (which experts texts use) and `prune()` (keep the N best), `upcycle()` (dense Qwen3 -> MoE), and the typed errors in
`marco_gguf.base.errors`; `marco_gguf.measure.bench.bench()` is the benchmark.
"""

from marco_gguf.convert import ConvertResult, convert
from marco_gguf.demo import DemoResult, demo
from marco_gguf.experts.prune import PruneResult, prune
from marco_gguf.experts.usage import ExpertUsage, expert_usage
from marco_gguf.hf.upcycle import UpcycleResult, upcycle
from marco_gguf.llama.session import ChatSession
from marco_gguf.quant.presets import Preset, builtin_presets, load_preset
from marco_gguf.server import serve
from marco_gguf.synth.model import SynthResult, synthesize
from marco_gguf.version import __version__

__all__ = [
    "ChatSession",
    "ConvertResult",
    "DemoResult",
    "ExpertUsage",
    "Preset",
    "PruneResult",
    "SynthResult",
    "UpcycleResult",
    "__version__",
    "builtin_presets",
    "convert",
    "demo",
    "expert_usage",
    "load_preset",
    "prune",
    "serve",
    "synthesize",
    "upcycle",
]
