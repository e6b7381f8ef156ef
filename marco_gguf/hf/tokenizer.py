"""tokenizer.json / tokenizer_config.json -> GGUF tokenizer keys, as llama.cpp's converter writes them.

Token list and types follow conversion/base.py `get_vocab_base` (ids without a token become
`[PAD{i}]` UNUSED; added tokens are CONTROL when special or `<|...|>`-shaped, else USER_DEFINED);
merges, special ids, add_*_token flags and the chat template come from gguf-py's SpecialVocab,
the very code llama.cpp's converter calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf

from marco_gguf.arch.qwen3moe import PRETOKENIZER_REGEX, TOKENIZER_MODEL, TOKENIZER_PRE, pretokenizer_allowed
from marco_gguf.base.errors import TokenizerError
from marco_gguf.base.jsonfields import Fields, is_int, load_json_object


def _load_json(path: Path) -> dict[str, Any]:
    return load_json_object(
        path,
        TokenizerError,
        "copy tokenizer.json and tokenizer_config.json from the model's release",
        "missing tokenizer file",
    )


SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")  # gguf-py SpecialVocab.special_token_types


def check_tokenizer_json(tok: dict[str, Any], path: Path) -> None:
    """Type-check what we and gguf-py's SpecialVocab read from tokenizer.json (model, added tokens,
    pre-tokenizer, post-processor, normalizer); the decoder is not read by either."""
    f = Fields(tok, path, TokenizerError, "download tokenizer.json again")
    model = f.sub("model")
    model.str("type")
    vocab = model.obj("vocab")
    ids: dict[int, str] = {}
    for token, i in vocab.items():
        if not is_int(i) or i < 0:
            raise model.sub("vocab").fail(token, i, "a non-negative integer token id")
        if i in ids:
            raise TokenizerError(
                f"{path}: model.vocab gives id {i} to both {ids[i]!r} and {token!r}", "download tokenizer.json again"
            )
        ids[i] = token
    _check_merges(model, model.list("merges", object))
    for n, entry in enumerate(f.list("added_tokens", dict, default=[])):
        added = Fields(entry, path, TokenizerError, "download tokenizer.json again", f"added_tokens[{n}].")
        added.int("id")
        if not added.str("content"):
            raise added.fail("content", "", "the token's text")
        added.bool("special", default=False)
    for key in ("pre_tokenizer", "post_processor", "normalizer"):
        part = f.sub(key)
        for sub in ("pretokenizers", "processors", "normalizers"):
            part.list(sub, dict, default=[])


def _check_merges(model: Fields, merges: list[Any]) -> None:
    # two forms: "a b" strings, or [a, b] pairs (transformers >= 4.45); llama.cpp splits at the first space
    # after the first character, so a string needs one there
    for n, m in enumerate(merges):
        pair = isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) and x for x in m)
        if not (pair or (isinstance(m, str) and m.find(" ", 1) > 0 and not m.endswith(" "))) or type(m) is not type(
            merges[0]
        ):
            raise model.fail(f"merges[{n}]", m, '"left right" strings or [left, right] pairs, one form for all')


def check_tokenizer_config(cfg: dict[str, Any], path: Path) -> None:
    """Type-check the tokenizer_config.json keys SpecialVocab reads: it would silently skip a wrong one."""
    f = Fields(cfg, path, TokenizerError, "download tokenizer_config.json again")
    check_chat_template(f)
    for typ in SPECIAL_TYPES:
        f.bool(f"add_{typ}_token", default=None)
        entry = f.data.get(f"{typ}_token")
        if isinstance(entry, dict):
            f.sub(f"{typ}_token").str("content")
        elif entry is not None and not isinstance(entry, str):
            raise f.fail(f"{typ}_token", entry, "a token string or an object with its content")


def check_chat_template(f: Fields) -> None:
    """chat_template: a Jinja string, or a list of {"name", "template"} (named templates), or absent."""
    value = f.data.get("chat_template")
    if isinstance(value, list):
        for n, entry in enumerate(f.list("chat_template", dict)):
            named = Fields(entry, f.path, f.error, f.hint, f"chat_template[{n}].")
            named.str("name"), named.str("template")
    elif value is not None:
        f.str("chat_template")


def _split_patterns(pre: Any) -> list[Any]:
    if not isinstance(pre, dict):
        return []
    if pre.get("type") == "Sequence":
        return [p for sub in pre.get("pretokenizers") or [] for p in _split_patterns(sub)]
    if pre.get("type") == "Split":
        pattern = pre.get("pattern")
        return [pattern.get("Regex") if isinstance(pattern, dict) else pattern]
    return []


# SmolLM/SmolLM2's pre-tokenizer as its tokenizer.json spells it (single digits, then GPT-2's byte-level
# regex); llama.cpp calls it "smollm" (llama-vocab.cpp LLAMA_VOCAB_PRE_TYPE_SMOLLM)
SMOLLM_PRE_TOKENIZER = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}


def _is_smollm(pre: Any) -> bool:
    return isinstance(pre, dict) and pre == SMOLLM_PRE_TOKENIZER


def check_bpe(tok: dict[str, Any], path: Path, vocab_size: int) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer: Qwen2/Qwen3's for Marco's vocabulary, always; SmolLM's
    is accepted for another vocabulary (a model upcycled from SmolLM2). Anything else is refused, since llama.cpp
    would tokenize differently."""
    model = tok["model"]
    if model.get("type") != "BPE":
        raise TokenizerError(
            f"{path}: model type {model.get('type')!r} is not a byte-level BPE",
            "Marco models use the Qwen3 tokenizer: copy it from the model's release",
        )
    pre = tok.get("pre_tokenizer")
    if _split_patterns(pre) == [PRETOKENIZER_REGEX]:
        return TOKENIZER_PRE
    if _is_smollm(pre) and pretokenizer_allowed("smollm", vocab_size):
        return "smollm"
    raise TokenizerError(
        f"{path}: pre-tokenizer is not Qwen2/Qwen3's",
        "llama.cpp would tokenize differently; use the tokenizer from the model's release",
    )


def looks_special(token: str) -> bool:
    """llama.cpp's converter heuristic (base.py does_token_look_special) for added tokens not flagged special."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def vocab_tokens(tok: dict[str, Any], vocab_size: int, path: Path) -> tuple[list[str], list[gguf.TokenType]]:
    """Token strings and GGUF token types for ids 0..vocab_size-1."""
    added = {a["id"]: a for a in tok.get("added_tokens") or []}
    reverse = {i: t for t, i in tok["model"]["vocab"].items()}
    reverse.update({i: a["content"] for i, a in added.items()})
    if reverse and max(reverse) >= vocab_size:
        raise TokenizerError(
            f"{path}: token id {max(reverse)} does not fit vocab_size {vocab_size} from config.json",
            "config.json and tokenizer.json are from different models",
        )
    tokens: list[str] = []
    types: list[gguf.TokenType] = []
    seen: dict[str, int] = {}
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
        if (first := seen.setdefault(tokens[-1], i)) != i:  # llama.cpp aborts on a token listed twice
            raise TokenizerError(
                f"{path}: token {tokens[-1]!r} has two ids, {first} and {i} (an added token "
                "repeats a vocabulary entry)",
                "download tokenizer.json again",
            )
    return tokens, types


def _adds_nothing(tok: dict[str, Any]) -> bool:
    post = tok.get("post_processor") or {}
    return any(p.get("type") == "ByteLevel" for p in post.get("processors") or [post])


def add_tokenizer(writer: gguf.GGUFWriter, folder: Path, vocab_size: int) -> dict[str, Any]:
    """Write the tokenizer keys into `writer`; returns a summary (tokens, merges, special ids, template)."""
    path = folder / "tokenizer.json"
    tok = _load_json(path)
    check_tokenizer_json(tok, path)
    # required: eos token and chat template live there
    check_tokenizer_config(_load_json(folder / "tokenizer_config.json"), folder / "tokenizer_config.json")
    if (alt := folder / "chat_template.json").is_file():
        check_chat_template(Fields(_load_json(alt), alt, TokenizerError, "download chat_template.json again"))
    pre = check_bpe(tok, path, vocab_size)
    tokens, types = vocab_tokens(tok, vocab_size, path)
    writer.add_tokenizer_model(TOKENIZER_MODEL)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = _special_vocab(folder)
    if not special.merges:
        raise TokenizerError(f"{path}: no BPE merges", "download tokenizer.json again")
    if _adds_nothing(tok):
        # llama.cpp's current gguf-py reads a ByteLevel post-processor as "add neither BOS nor EOS";
        # gguf 0.19 on PyPI does not, so state both here (Ollama would otherwise assume add_bos=true)
        special.add_special_token.setdefault("bos", False)
        special.add_special_token.setdefault("eos", False)
    special.add_special_token.setdefault("bos", False)
    special.add_to_gguf(writer, quiet=True)
    return {
        "tokens": len(tokens),
        "merges": len(special.merges),
        "special_ids": dict(special.special_token_ids),
        "chat_template": special.chat_template is not None,
    }


def _special_vocab(folder: Path) -> gguf.SpecialVocab:
    """gguf-py's SpecialVocab, the code llama.cpp's converter calls. The files were type-checked above;
    nested post-processor templates were not, so what it still trips on becomes a TokenizerError."""
    try:
        return gguf.SpecialVocab(folder, load_merges=True)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as e:
        raise TokenizerError(
            f"{folder / 'tokenizer.json'}: gguf-py cannot read this tokenizer ({type(e).__name__}: {e})",
            "the tokenizer files are damaged: download tokenizer.json and tokenizer_config.json again",
        ) from None
