"""The planner's caches (errors per type, gains per tensor, group KLDs per first plan) are ours, kept beside the
output: one that is missing, damaged or made under another key reads as nothing, so it is measured again and
replaced, never an error and never a wrong plan; one written by the tool reads back as written."""

from __future__ import annotations

import json

import pytest

from marco_gguf.quant import joint, measure_cache, sensitivity

KEY = "k" * 64
GOOD = {  # (a document each loader accepts, what it reads back)
    "errors": (
        {"key": KEY, "format": 1, "errors": {"blk.0.attn_v.weight": {"Q4_K": 0.5, "Q8_0": 0.01}}},
        {"blk.0.attn_v.weight": {"Q4_K": 0.5, "Q8_0": 0.01}},
    ),
    "gains": (
        {"key": KEY, "format": 2, "tensors": {"blk.0.attn_v.weight": [0.04, 0.002]}},
        {"blk.0.attn_v.weight": (0.04, 0.002)},
    ),
    "groups": (
        {"key": KEY, "format": joint.FORMAT, "plans": {"p" * 64: {"token_embd": 0.08, "the rest": 0.14}}},
        {"p" * 64: {"token_embd": 0.08, "the rest": 0.14}},
    ),
}
LOADERS = {  # what each reads as nothing
    "errors": (lambda path: measure_cache.load(path, KEY), {}),
    "gains": (lambda path: sensitivity._load(path, KEY), None),
    "groups": (lambda path: joint._load(path, KEY), {}),
}


def damaged(doc: dict, how: str) -> str:
    body = next(k for k in ("errors", "tensors", "plans") if k in doc)
    changed = {
        "another key's": doc | {"key": "other"},
        "no key": {k: v for k, v in doc.items() if k != "key"},
        "its table a list": doc | {body: []},
        "its table missing": {k: v for k, v in doc.items() if k != body},
        "a value not a number": doc | {body: {n: "x" for n in doc[body]}},
    }
    if how == "cut short":
        return json.dumps(doc)[:-7]
    if how == "a JSON list":
        return "[1, 2]"
    if how == "a negative value":
        text = json.dumps(doc)
        return text.replace("0.01", "-1.0").replace("0.002", "-1.0").replace("0.14", "-1.0")
    return json.dumps(changed[how])


HOW = ["cut short", "a JSON list", "another key's", "no key", "its table a list", "its table missing",
       "a value not a number", "a negative value"]  # fmt: skip


@pytest.mark.parametrize("which", sorted(LOADERS))
@pytest.mark.parametrize("how", HOW)
def test_a_damaged_or_foreign_cache_reads_as_nothing(which, how, tmp_path):
    path = tmp_path / "m.cache.json"
    path.write_text(damaged(GOOD[which][0], how))
    load, nothing = LOADERS[which]
    assert load(path) == nothing


@pytest.mark.parametrize("which", sorted(LOADERS))
def test_a_missing_cache_reads_as_nothing_and_a_written_one_as_written(which, tmp_path):
    path = tmp_path / "sub" / "m.cache.json"
    load, nothing = LOADERS[which]
    assert load(path) == nothing
    measure_cache.write_keyed(path, GOOD[which][0])
    assert load(path) == GOOD[which][1] and [p.name for p in path.parent.iterdir()] == ["m.cache.json"]
