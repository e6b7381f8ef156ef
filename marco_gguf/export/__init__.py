"""Getting GGUFs into the tools people run: an Ollama Modelfile, LM Studio's models folder, a model card.

`export_ollama(gguf, outdir=, name=, force=)`, `export_lmstudio(gguf, publisher=, copy=, link=, symlink=,
home=, force=)` and `write_card(folder, force=)`; each returns a result dataclass with `as_dict()`.
"""

from marco_gguf.export.card import CardResult, write_card
from marco_gguf.export.card_files import CardRow
from marco_gguf.export.lmstudio import LMStudioExport, export_lmstudio, lmstudio_home, models_dir
from marco_gguf.export.ollama import OllamaExport, export_ollama
from marco_gguf.export.templates import GoTemplate, go_template_for, render_chat

__all__ = [
    "CardResult",
    "CardRow",
    "GoTemplate",
    "LMStudioExport",
    "OllamaExport",
    "export_lmstudio",
    "export_ollama",
    "go_template_for",
    "lmstudio_home",
    "models_dir",
    "render_chat",
    "write_card",
]
