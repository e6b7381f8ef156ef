"""tokenizer.json / tokenizer_config.json -> GGUF tokenizer keys, as llama.cpp's converter writes them.

Token list and types follow conversion/base.py `get_vocab_base` (ids without a token become
`[PAD{i}]` UNUSED; added tokens are CONTROL when special or `<|...|>`-shaped, else USER_DEFINED);
merges, special ids, add_*_token flags and the chat template come from gguf-py's SpecialVocab,
the very code llama.cpp's converter calls.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf

from .errors import TokenizerError

TOKENIZER_MODEL = "gpt2"  # byte-level BPE
TOKENIZER_PRE = "qwen2"   # llama.cpp's name for the Qwen2/Qwen3 pre-tokenizer regex below
QWEN2_PRETOKENIZER_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"{path}: missing tokenizer file",
                             "copy tokenizer.json and tokenizer_config.json from the model's release") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})", "download it again") from None


def _split_patterns(pre: Any) -> list[str]:
    if not isinstance(pre, dict):
        return []
    if pre.get("type") == "Sequence":
        return [p for sub in pre.get("pretokenizers", []) for p in _split_patterns(sub)]
    if pre.get("type") == "Split":
        return [pre.get("pattern", {}).get("Regex", "")]
    return []


def check_qwen_bpe(tok: dict[str, Any], path: Path) -> None:
    """Refuse tokenizers llama.cpp's `qwen2` pre-tokenizer would not reproduce."""
    model = tok.get("model", {})
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise TokenizerError(f"{path}: model type {model.get('type')!r} is not a byte-level BPE",
                             "Marco models use the Qwen3 tokenizer: copy it from the model's release")
    if _split_patterns(tok.get("pre_tokenizer")) != [QWEN2_PRETOKENIZER_REGEX]:
        raise TokenizerError(f"{path}: pre-tokenizer is not Qwen2/Qwen3's",
                             "llama.cpp would tokenize differently; use the tokenizer from the model's release")


def looks_special(token: str) -> bool:
    """llama.cpp's converter heuristic (base.py does_token_look_special) for added tokens not flagged special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def vocab_tokens(tok: dict[str, Any], vocab_size: int, path: Path) -> tuple[list[str], list[int]]:
    """Token strings and GGUF token types for ids 0..vocab_size-1."""
    added = {int(a["id"]): a for a in tok.get("added_tokens", [])}
    reverse = {int(i): t for t, i in tok["model"]["vocab"].items()}
    reverse.update({i: a["content"] for i, a in added.items()})
    if reverse and max(reverse) >= vocab_size:
        raise TokenizerError(f"{path}: token id {max(reverse)} does not fit vocab_size {vocab_size} from config.json",
                             "config.json and tokenizer.json are from different models")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            control = added[i].get("special") or looks_special(reverse[i])
            types.append(gguf.TokenType.CONTROL if control else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _adds_nothing(tok: dict[str, Any]) -> bool:
    post = tok.get("post_processor") or {}
    return any(p.get("type") == "ByteLevel" for p in post.get("processors", [post]))


def add_tokenizer(writer: gguf.GGUFWriter, folder: Path, vocab_size: int) -> dict[str, Any]:
    """Write the tokenizer keys into `writer`; returns a summary (tokens, merges, special ids, template)."""
    path = folder / "tokenizer.json"
    tok = _load_json(path)
    _load_json(folder / "tokenizer_config.json")  # required: eos token and chat template live there
    check_qwen_bpe(tok, path)
    tokens, types = vocab_tokens(tok, vocab_size, path)
    writer.add_tokenizer_model(TOKENIZER_MODEL)
    writer.add_tokenizer_pre(TOKENIZER_PRE)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True)
    if not special.merges:
        raise TokenizerError(f"{path}: no BPE merges", "download tokenizer.json again")
    if _adds_nothing(tok):
        # llama.cpp's current gguf-py reads a ByteLevel post-processor as "add neither BOS nor EOS";
        # gguf 0.19 on PyPI does not, so state both here (Ollama would otherwise assume add_bos=true)
        special.add_special_token.setdefault("bos", False)
        special.add_special_token.setdefault("eos", False)
    special.add_special_token.setdefault("bos", False)
    special.add_to_gguf(writer, quiet=True)
    return {"tokens": len(tokens), "merges": len(special.merges), "special_ids": dict(special.special_token_ids),
            "chat_template": special.chat_template is not None}
