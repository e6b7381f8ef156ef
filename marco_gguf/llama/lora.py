"""GGUF LoRA adapters on a llama.cpp model: loaded once per model (llama_adapter_lora_init, checked first so a
wrong adapter is one line instead of llama.cpp's log), set on a context with their scales
(llama_set_adapters_lora, which llama.cpp skips when the set is unchanged), freed before the model."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from marco_gguf.base.errors import AdapterError
from marco_gguf.gguf_io.lora_gguf import check_adapter
from marco_gguf.llama.loader import quiet_stderr


@dataclass(frozen=True)
class LoraFile:
    """An adapter file and the scale it is applied with (llama-server's --lora FILE / --lora-scaled FILE:SCALE)."""

    path: Path
    scale: float = 1.0

    @classmethod
    def parse_scaled(cls, text: str) -> LoraFile:
        """`FILE:SCALE`, as llama-server's --lora-scaled takes it (the last colon splits, so paths may have one)."""
        file, sep, scale = text.rpartition(":")
        try:
            value = float(scale)
        except ValueError:
            value = float("nan")
        if not sep or not file or value != value:
            raise AdapterError(f"--lora-scaled {text!r}: expected FILE:SCALE, e.g. my-adapter.gguf:0.5")
        return cls(Path(file), value)


class Adapters:
    """Adapters loaded on one llama.cpp model (a llama_model pointer); `close()` before the model is freed."""

    def __init__(self, model_ptr: object, model_path: str | Path, files: Sequence[LoraFile]) -> None:
        import llama_cpp

        self.files = list(files)
        self._handles: list = []
        try:
            for f in self.files:
                check_adapter(f.path, model_path)
                with quiet_stderr():
                    handle = llama_cpp.llama_adapter_lora_init(model_ptr, str(f.path).encode())
                if not handle:
                    raise AdapterError(f"{f.path}: llama.cpp could not load it", "set MARCO_GGUF_DEBUG=1 for its log")
                self._handles.append(handle)
        except BaseException:
            self.close()
            raise

    def apply(self, ctx_ptr: object, scales: Sequence[float] | None = None) -> None:
        """Set every adapter on the context with `scales` (default: each file's own); scale 0 turns one off."""
        import llama_cpp

        scales = [f.scale for f in self.files] if scales is None else list(scales)
        n = len(self._handles)
        arr = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*self._handles)
        vals = (ctypes.c_float * n)(*scales)
        if llama_cpp.llama_set_adapters_lora(ctx_ptr, arr, n, vals) != 0:
            raise AdapterError("llama.cpp refused to set the LoRA adapters on the context")

    def close(self) -> None:
        import llama_cpp

        for handle in self._handles:
            llama_cpp.llama_adapter_lora_free(handle)
        self._handles.clear()


def lora_files(files: Sequence[str | Path] = (), scaled: Sequence[str] = ()) -> list[LoraFile]:
    """--lora FILE (scale 1) and --lora-scaled FILE:SCALE options as LoraFiles, in that order."""
    return [LoraFile(Path(f)) for f in files] + [LoraFile.parse_scaled(s) for s in scaled]
