"""GGUF pre-load validation: damaged copies of a good file are refused by `read_info` with one line, or load and
decode cleanly in llama.cpp in a child process; never a traceback, never a process killed by an abort."""

from __future__ import annotations

import random

import pytest
from checkpoints import Spec
from gguf import GGUFValueType as V
from gguf_fuzzing import FAMILIES, Doc, Loader, damage, encode, run_case
from typer.testing import CliRunner

from marco_gguf.base.errors import GGUFFileError
from marco_gguf.cli.app import app
from marco_gguf.gguf_io.info import read_info

CASES_PER_FAMILY = 60  # 420 cases, about 15 s; benchmarks/fuzz_campaign.py gguf runs thousands


@pytest.fixture(scope="module")
def good(converted):
    return converted(Spec(), "q8_0").path


@pytest.fixture(scope="module")
def loader():
    child = Loader()
    yield child
    child.close()


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_damaged_gguf_is_refused_in_one_line_or_loads(family, good, loader, tmp_path):
    data, bad, refused = good.read_bytes(), [], 0
    assert loader.load(good) == ("loaded", ""), "the undamaged file must load in the child"
    for i in range(CASES_PER_FAMILY):
        seed = FAMILIES.index(family) * 1_000_000 + i
        case = run_case(seed, family, good, data, loader, tmp_path)
        if case.outcome not in ("refused", "loaded"):
            bad.append(f"seed {case.seed} [{case.outcome}] {case.what}: {case.detail}")
        elif case.outcome == "refused":
            refused += 1
            damaged = tmp_path / "refused.gguf"
            damaged.write_bytes(damage(random.Random(seed), data, good, family)[0])
            r = CliRunner().invoke(app, ["inspect", str(damaged)])
            # inspect shows any GGUF; a file refused only for its architecture is inspected (exit 0)
            if r.exit_code not in (0, 1) or (
                r.exit_code == 1 and (r.stderr.count("\n") != 1 or not r.stderr.startswith("error:"))
            ):
                bad.append(f"seed {seed}: inspect printed {r.stderr!r} (exit {r.exit_code})")
    assert not bad, "\n".join(bad)
    assert refused > 0, "every family damages something that must be refused"


def _kv(doc: Doc, key: str) -> list:
    return next(kv for kv in doc.kvs if kv[0] == key)


def _set(key: str, value) -> object:
    return lambda doc: _kv(doc, key).__setitem__(3, value)


def _dup_token(doc: Doc) -> None:
    toks = _kv(doc, "tokenizer.ggml.tokens")
    toks[3] = [*toks[3][:5], toks[3][3], *toks[3][6:]]


def _drop(key: str) -> object:
    return lambda doc: doc.kvs.remove(_kv(doc, key))


def _retype(key: str, vtype: V) -> object:
    return lambda doc: _kv(doc, key).__setitem__(1, vtype)


def _tensor(i: int, field: int, value) -> object:
    return lambda doc: doc.tensors[i].__setitem__(field, value)


# each of these made llama.cpp abort (SIGABRT) or fail inside its loader before read_info knew them
CASES = [
    (
        "a repeated token: llama-vocab.cpp GGML_ASSERT(id_to_token.size() == token_to_id.size())",
        _dup_token,
        "tokenizer.ggml.tokens lists",
    ),
    (
        "zero layers: load_hparams asserts 0 < n_layer <= 512",
        _set("qwen3moe.block_count", 0),
        "qwen3moe.block_count is 0, llama.cpp needs 1..512",
    ),
    (
        "more experts than llama.cpp's LLAMA_MAX_EXPERTS",
        _set("qwen3moe.expert_count", 2**31),
        "qwen3moe.expert_count is 2147483648, llama.cpp needs 1..1024",
    ),
    (
        "experts per token missing: asserts n_expert_used > 0",
        _drop("qwen3moe.expert_used_count"),
        "missing key qwen3moe.expert_used_count",
    ),
    (
        "a key of the wrong type: llama-model-loader throws",
        _retype("qwen3moe.embedding_length", V.INT32),
        "key qwen3moe.embedding_length is INT32, llama.cpp reads it as UINT32",
    ),
    (
        "a broken chat template: llama-cpp-python's jinja2 raises while loading",
        _set("tokenizer.chat_template", "{% if messages %}{{ x }"),
        "tokenizer.chat_template is not a valid Jinja template",
    ),
    (
        "a NUL inside the chat template: llama-cpp-python gets it cut short and fails to compile it",
        _set("tokenizer.chat_template", "{{ 'a' }}\0{{"),
        "contains a NUL character at 9",
    ),
    (
        "an unknown rope scaling type: load_hparams asserts",
        lambda d: d.kvs.append(["qwen3moe.rope.scaling.type", V.STRING, None, "bogus"]),
        "rope.scaling.type is 'bogus'",
    ),
    (
        "key_length unlike rope.dimension_count: the qwen3moe graph asserts",
        lambda d: d.kvs.append(["qwen3moe.rope.dimension_count", V.UINT32, None, 32]),
        "must be one even head size",
    ),
    (
        "head_count_kv that does not divide head_count: ggml's broadcast asserts",
        _set("qwen3moe.attention.head_count_kv", 3),
        "head_count_kv is 3: it must divide head_count 4",
    ),
    (
        "token_type shorter than tokens: llama-vocab throws",
        lambda d: _kv(d, "tokenizer.ggml.token_type")[3].pop(),
        "tokenizer.ggml.token_type has",
    ),
    (
        "a tensor's data moved: gguf.cpp requires packed, aligned data",
        _tensor(3, 3, 32),
        "has data offset 32, expected",
    ),
    ("an unknown tensor type", _tensor(-1, 2, 4), "has unknown ggml type 4"),
    ("a norm stored as integers (same size as F32): ggml cannot use it", _tensor(-1, 2, 26), "cannot use there"),
    (
        "a tensor transposed (same size): llama.cpp checks shapes",
        _tensor(3, 1, [128, 256]),
        "the qwen3moe.* keys imply",
    ),
    ("a repeated key: gguf.cpp refuses it", lambda d: d.kvs.append(list(d.kvs[3])), "appears twice"),
    ("an unsupported GGUF version", lambda d: setattr(d, "version", 1), "GGUF version 1 is not supported"),
    ("a 64-byte tensor name: ggml's limit is 63", _tensor(0, 0, "t" * 64), "llama.cpp allows at most 63"),
]


@pytest.mark.parametrize("why,edit,message", CASES, ids=[c[0].split(":")[0] for c in CASES])
def test_refused_before_llama_cpp_sees_it(why, edit, message, good, tmp_path):
    doc = Doc.of(good)
    edit(doc)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(encode(doc))
    with pytest.raises(GGUFFileError) as e:
        read_info(bad)
    assert message in e.value.message and str(bad) in e.value.message, e.value.message


def test_reencoding_an_undamaged_header_is_exact(good, tmp_path):
    """The fuzzer's encoder writes the very bytes it decoded, so every case differs from the good file only
    by its mutation."""
    assert encode(Doc.of(good)) == good.read_bytes()
