"""marco-gguf: Marco-MoE checkpoints -> GGUF for llama.cpp, Ollama and LM Studio.

Public API: `convert()` and its `ConvertResult`, `synthesize()`, `demo()`, `load_preset()`, `ChatSession`, `serve()`,
`expert_usage()` (which experts texts use) and `prune()` (keep the N best), and the typed errors in
`marco_gguf.errors`; `marco_gguf.bench.bench()` is the benchmark.
"""

from .convert import ConvertResult, convert
from .demo import DemoResult, demo
from .experts import ExpertUsage, expert_usage
from .presets import Preset, builtin_presets, load_preset
from .prune import PruneResult, prune
from .runtime import ChatSession
from .server import serve
from .synth import SynthResult, synthesize
from .version import __version__

__all__ = [
    "ChatSession",
    "ConvertResult",
    "DemoResult",
    "ExpertUsage",
    "Preset",
    "PruneResult",
    "SynthResult",
    "__version__",
    "builtin_presets",
    "convert",
    "demo",
    "expert_usage",
    "load_preset",
    "prune",
    "serve",
    "synthesize",
]
