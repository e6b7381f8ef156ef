"""`prune --usage FILE` reads a JSON file a user hands us: damaged copies of a real one, made seeded ways,
are each refused with one typed line naming the file, or read and ranked into a valid expert choice."""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
from checkpoints import Spec

from marco_gguf.base.errors import MarcoGGUFError
from marco_gguf.experts.prune import choose_experts
from marco_gguf.experts.usage import expert_usage
from marco_gguf.experts.usage_file import read_usage
from marco_gguf.quant.imatrix import read_text

MODEL = Spec(dtype="f32")  # 2 layers, 16 experts, top-4
CASES = 240
# values a hand edit or a broken writer leaves: wrong types, out of range, too large for int64, not finite
ODD = [None, -1, 0, 1.5, 10**30, -1e300, "x", "", [], {}, True, [[1]], math.nan, math.inf]


@pytest.fixture(scope="module")
def original(converted, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("usage")
    text = folder / "calib.txt"
    text.write_text(read_text(None)[0][:3000], encoding="utf-8")
    expert_usage(converted(MODEL, "f32").path, [text], ctx=64, usage=folder / "usage.json")
    return json.loads((folder / "usage.json").read_text())


def _places(doc):
    """Every (container, key) in the document, tables included."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        yield doc, k
        yield from _places(v)


def _replace(doc, rng):
    parent, key = rng.choice(list(_places(doc)))
    parent[key] = copy.deepcopy(rng.choice(ODD))


def _delete(doc, rng):
    parent, key = rng.choice(list(_places(doc)))
    del parent[key]


def _ragged(doc, rng):
    tables = [(p, k) for p, k in _places(doc) if isinstance(p[k], list) and p[k] and isinstance(p[k][0], list)]
    parent, key = rng.choice(tables)
    row = rng.randrange(len(parent[key]))
    parent[key][row] = parent[key][row][: rng.randrange(len(parent[key][row]))]


def _text_bytes(raw: str, rng) -> str:
    cut = rng.randrange(len(raw))
    return raw[:cut] if rng.random() < 0.5 else raw[:cut] + rng.choice('{}[],:"0x\\') + raw[cut + 1 :]


FAMILIES = {"replace a value": _replace, "delete a key": _delete, "ragged table": _ragged}


def damaged(original: dict, seed: int) -> tuple[str, str]:
    """(family, file text) of one seeded damaged copy."""
    rng = random.Random(seed)
    family = rng.choice([*FAMILIES, "bytes"])
    if family == "bytes":
        return family, _text_bytes(json.dumps(original), rng)
    doc = copy.deepcopy(original)
    FAMILIES[family](doc, rng)
    return family, json.dumps(doc)


def test_every_damaged_usage_file_is_refused_in_one_line_or_read_whole(original, tmp_path):
    outcomes: dict[str, int] = {}
    for seed in range(CASES):
        family, text = damaged(original, seed)
        path = tmp_path / f"usage-{seed}.json"
        path.write_text(text, encoding="utf-8")
        try:
            usage = read_usage(path)
            layers, experts = usage.model.layers, usage.model.experts
            kept = choose_experts(usage, min(4, experts), "reap")
        except MarcoGGUFError as e:
            assert "\n" not in str(e) and str(path) in str(e), (seed, family, str(e))
            outcomes["refused"] = outcomes.get("refused", 0) + 1
            continue
        assert len(kept) == layers, (seed, family)
        assert all(len(set(row)) == min(4, experts) and all(0 <= e < experts for e in row) for row in kept), seed
        outcomes["read"] = outcomes.get("read", 0) + 1
    assert outcomes.get("refused", 0) > CASES // 2, outcomes  # the families do damage most copies


def test_the_undamaged_file_reads_back(original, tmp_path):
    path = tmp_path / "usage.json"
    path.write_text(json.dumps(original), encoding="utf-8")
    usage = read_usage(path)
    assert (usage.model.layers, usage.model.experts) == (2, 16)
    assert [len(row) for row in choose_experts(usage, 4, "reap")] == [4, 4]


def _set(path: tuple, value):
    def mutate(doc: dict) -> None:
        *parents, last = path
        for key in parents:
            doc = doc[key]
        doc[last] = value

    return mutate


NAMED = [  # (reason, change to a real file, what the one line says)
    (
        "a NaN count, which made int() raise ValueError",
        _set(("texts", 0, "counts", 0, 0), math.nan),
        "texts[0].counts holds a value outside that",
    ),
    (
        "a count too large for int64, which made numpy raise OverflowError",
        _set(("texts", 0, "counts", 0, 0), 10**30),
        "texts[0].counts holds a value outside that",
    ),
    ("a fractional count, which was truncated silently", _set(("texts", 0, "counts", 1, 2), 2.5), "whole numbers >= 0"),
    (
        "layers as text, which reached the shape check as a str",
        _set(("model", "layers"), "2"),
        "model.layers is '2' (a string), expected an integer",
    ),
    (
        "tokens as a list, which made int() raise TypeError",
        _set(("texts", 0, "tokens"), [1]),
        "texts[0].tokens is [1] (a list), expected an integer",
    ),
    (
        "a table of strings",
        _set(("texts", 0, "weight"), "high"),
        "texts[0].weight is 'high' (a string), expected a table",
    ),
]


@pytest.mark.parametrize("reason,mutate,fragment", NAMED, ids=[c[0] for c in NAMED])
def test_named_damage_is_one_line(reason, mutate, fragment, original, tmp_path):
    doc = copy.deepcopy(original)
    mutate(doc)
    path = tmp_path / "usage.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(MarcoGGUFError) as e:
        read_usage(path)
    assert fragment in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
