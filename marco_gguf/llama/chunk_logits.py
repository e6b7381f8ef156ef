"""Logits of one chunk of text at a time, through llama.cpp's C API (the raw calls `quality` needs, kept here).

`ChunkModel` tokenizes as llama-perplexity does (`common_tokenize(ctx, text, add_special=true,
parse_special=false)`), and evaluates one chunk per call with a cleared KV cache, asking for logits
only at the positions that are scored. The logits are yielded as NumPy views of llama.cpp's own
output buffer, one decode call (at most n_batch positions) at a time: nothing is copied and
nothing outlives the next call.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from marco_gguf.base.errors import GGUFFileError
from marco_gguf.llama.loader import load_model


class ChunkModel:
    """A GGUF loaded with a context of exactly `n_ctx` tokens, for scoring chunks of that length."""

    def __init__(self, path: str | Path, *, n_ctx: int, threads: int | None) -> None:
        import llama_cpp as lib

        self.path, self.n_ctx, self._lib = Path(path), n_ctx, lib
        # flash attention on, as llama-perplexity has it by default on a CPU (its "auto"): the figures then match
        self.llm = load_model(path, n_ctx=n_ctx, threads=threads, flash_attn=True)
        vocab = lib.llama_model_get_vocab(self.llm.model)
        self.n_vocab = lib.llama_vocab_n_tokens(vocab)
        self.add_bos, self.bos = bool(lib.llama_vocab_get_add_bos(vocab)), lib.llama_vocab_bos(vocab)
        if lib.llama_vocab_get_add_eos(vocab):  # llama-perplexity asserts against it: every chunk would end in EOS
            self.close()
            raise GGUFFileError(
                f"{self.path}: its tokenizer appends an end-of-sequence token to every text "
                "(tokenizer.ggml.add_eos_token), which perplexity cannot score",
                "set add_eos_token false in the GGUF metadata",
            )
        self.n_batch = self.llm.n_batch
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)

    def tokenize(self, text: bytes) -> np.ndarray:
        """Token ids of `text` as llama-perplexity gets them: BOS if the vocabulary adds one, special tokens as text."""
        return np.asarray(self.llm.tokenize(text, add_bos=True, special=False), dtype=np.int32)

    def chunk_logits(self, tokens: Sequence[int] | np.ndarray, first: int, last: int) -> Iterator[np.ndarray]:
        """Evaluate `tokens` (one chunk, from position 0) and yield the logits of positions first..last-1 in
        order, as float32 [rows, n_vocab] views valid until the next step. The first token becomes BOS when
        the vocabulary adds one (llama-perplexity's rule for every chunk)."""
        lib, ctx, b = self._lib, self.llm.ctx, self._batch
        lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
        for start in range(0, len(tokens), self.n_batch):
            n = min(self.n_batch, len(tokens) - start)
            n_out = 0
            for k in range(n):
                pos = start + k
                b.token[k] = self.bos if (pos == 0 and self.add_bos) else int(tokens[pos])
                b.pos[k], b.n_seq_id[k], b.seq_id[k][0] = pos, 1, 0
                b.logits[k] = int(first <= pos < last)
                n_out += first <= pos < last
            b.n_tokens = n
            if lib.llama_decode(ctx, b) != 0:
                raise GGUFFileError(f"{self.path}: llama.cpp failed to evaluate a chunk at position {start}")
            if n_out:
                ptr = lib.llama_get_logits(ctx)
                yield np.ctypeslib.as_array(
                    ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_out, self.n_vocab)
                )

    def close(self) -> None:
        """Free the batch and the model (idempotent)."""
        if getattr(self, "_batch", None) is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def __enter__(self) -> ChunkModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
