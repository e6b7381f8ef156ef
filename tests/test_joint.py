"""The gains corrected by group (quant/joint.py): which tensors form a group, how a group's ratio scales its
gains, the group KLDs cached per first plan beside the gains (and measured again when that file is damaged or
made under other gains), and a group's noise being each tensor's own noise at once."""

from __future__ import annotations

import json

import numpy as np
import pytest
from checkpoints import Spec
from gguf import GGMLQuantizationType as Q

from marco_gguf.llama.observer import GraphObserver, ObservedModel
from marco_gguf.quant import joint
from marco_gguf.quant.joint import REST, Group, corrected, groups, measure_groups
from marco_gguf.quant.sensitivity import Noise, mean_kld

ATTN, EXPS, EMBD, OUT = "blk.0.attn_v.weight", "blk.1.ffn_down_exps.weight", "token_embd.weight", "output.weight"

GROUPS = [  # (reason, tensor names, groups)
    (
        "tied: the embedding is the output matrix, a group of its own",
        [ATTN, EMBD, EXPS],
        {"token_embd": [EMBD], REST: [ATTN, EXPS]},
    ),
    (
        "untied: the output matrix and the lookup apart",
        [OUT, EXPS, EMBD, ATTN],
        {"output": [OUT], "token_embd": [EMBD], REST: [ATTN, EXPS]},
    ),
    ("no output side: one group", [EXPS, ATTN], {REST: [ATTN, EXPS]}),
]


@pytest.mark.parametrize("reason,names,want", GROUPS, ids=[g[0] for g in GROUPS])
def test_groups(reason, names, want):
    assert groups(names) == want


RATIOS = [  # (reason, estimated, measured, ratio)
    ("measured above the estimate: the group weighs more", 0.05, 0.08, 1.6),
    ("measured below: less", 0.9, 0.1, 0.1 / 0.9),
    ("no estimate (every gain 0): left as it is", 0.0, 0.3, 1.0),
    ("nothing measured (noise below the logits' rounding): left as it is", 0.2, 0.0, 1.0),
]


@pytest.mark.parametrize("reason,estimated,measured,ratio", RATIOS, ids=[r[0] for r in RATIOS])
def test_a_groups_ratio(reason, estimated, measured, ratio):
    assert Group("g", 1, estimated, measured).ratio == pytest.approx(ratio)


def test_corrected_scales_each_gain_by_its_groups_ratio():
    gains = {EMBD: 2.0, ATTN: 3.0, EXPS: 5.0}
    found = (Group("token_embd", 1, 1.0, 4.0), Group(REST, 2, 8.0, 2.0))
    assert corrected(gains, found) == {EMBD: 8.0, ATTN: 0.75, EXPS: 1.25}


class FakePasses:
    """Passes without llama.cpp: the KLD of a group is its tensor count; counts the passes run."""

    runs = 0

    def __init__(self, path, threads=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def kld(self, targets):
        FakePasses.runs += 1
        return float(len(targets))


CHOSEN = {EMBD: Q.Q6_K, ATTN: Q.Q4_K, EXPS: Q.IQ4_XS}
ERRORS = {EMBD: {"Q6_K": 0.5}, ATTN: {"Q4_K": 2.0, "Q5_K": 1.0}, EXPS: {"IQ4_XS": 4.0}}
GAINS = {EMBD: 1.0, ATTN: 0.5, EXPS: 0.25}


def groups_of(tmp_path, chosen=CHOSEN, key="k" * 64):
    return measure_groups(tmp_path / "m.gguf", chosen, ERRORS, GAINS, cache=(tmp_path, "m"), gains_key=key)


def test_groups_are_measured_once_per_first_plan_and_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(joint, "Passes", FakePasses)
    FakePasses.runs = 0
    found = groups_of(tmp_path)
    assert [g.as_dict() for g in found] == [
        {"name": "token_embd", "tensors": 1, "estimated": 0.5, "measured": 1.0, "ratio": 2.0},
        {"name": REST, "tensors": 2, "estimated": 2.0, "measured": 2.0, "ratio": 1.0},
    ]
    assert FakePasses.runs == 2 and groups_of(tmp_path) == found and FakePasses.runs == 2  # read back
    groups_of(tmp_path, CHOSEN | {ATTN: Q.Q5_K})  # another first plan: measured, kept beside the first
    [file] = tmp_path.glob("m.joint-*.json")
    assert FakePasses.runs == 4 and len(json.loads(file.read_text())["plans"]) == 2


DAMAGED = [  # (reason, what the cache file holds)
    ("not JSON", "{"),
    ("made under other gains", None),
    ("a negative KLD", "negative"),
    ("plans is a list", "list"),
]


@pytest.mark.parametrize("reason,content", DAMAGED, ids=[d[0] for d in DAMAGED])
def test_a_damaged_or_foreign_cache_is_measured_again(reason, content, tmp_path, monkeypatch):
    monkeypatch.setattr(joint, "Passes", FakePasses)
    groups_of(tmp_path)
    [file] = tmp_path.glob("m.joint-*.json")
    doc = json.loads(file.read_text())
    if content is None:
        doc["key"] = "other"
    elif content == "negative":
        doc["plans"] = {p: dict.fromkeys(by, -1.0) for p, by in doc["plans"].items()}
    elif content == "list":
        doc["plans"] = []
    file.write_text(json.dumps(doc) if content != "{" else content)
    FakePasses.runs = 0
    found = groups_of(tmp_path)
    assert FakePasses.runs == 2 and [g.measured for g in found] == [1.0, 2.0]
    assert json.loads(file.read_text())["key"] == "k" * 64


def whole_kld(ref, logits) -> float:
    """The textbook form, every row at once in float64."""
    r = ref.astype(np.float64) - np.log(np.exp(ref.astype(np.float64)).sum(1, keepdims=True))
    q = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum(1, keepdims=True))
    return float((np.exp(r) * (r - q)).sum(1).mean())


RNG = np.random.default_rng(7)
BASE = RNG.standard_normal((70, 300)).astype(np.float32)
KLDS = [  # (reason, ref logits, noisy logits, rows per step)
    ("rows not a multiple of the step", BASE, BASE + 0.3 * RNG.standard_normal(BASE.shape).astype(np.float32), 32),
    ("one row a step", BASE, BASE + 0.1 * RNG.standard_normal(BASE.shape).astype(np.float32), 1),
    ("large logits: shifted by their maximum first", 40 * BASE, 40 * BASE[::-1], 16),
]


@pytest.mark.parametrize("reason,ref,noisy,rows", KLDS, ids=[k[0] for k in KLDS])
def test_the_kld_by_steps_is_the_whole_arrays(reason, ref, noisy, rows):
    assert mean_kld(ref, noisy, rows) == pytest.approx(whole_kld(ref, noisy), rel=1e-12)


def test_the_kld_ignores_a_shift_per_row_and_is_zero_for_the_same_logits():
    shift = np.arange(len(BASE), dtype=np.float32)[:, None]
    assert mean_kld(BASE, BASE) == 0.0 and mean_kld(BASE, BASE + shift) == pytest.approx(0.0, abs=1e-12)


MODEL = Spec(dtype="f32")
TOKENS = list(range(10, 74))


@pytest.mark.slow
def test_a_groups_noise_is_each_tensors_own_at_once(converted):
    """Noised together, each product changes exactly as it does noised alone (noise is seeded per tensor),
    and the pass injects the sum of the energies. K and V read the same input, so neither's noise reaches the
    other's product."""
    path = converted(MODEL, "q8_0").path
    energy = {"blk.0.attn_k.weight": (Q.Q4_K, 2.5), ATTN: (Q.Q3_K, 0.7)}

    def deltas(targets) -> tuple[dict[str, np.ndarray], float]:
        noise, seen = Noise(), {}
        noise.aim(targets)

        def take(node):
            before = node.numpy().astype(np.float64)
            noise.take(node)
            seen[node.arg(0).name] = node.numpy() - before

        with ObservedModel(path, GraphObserver(noise.wants, take), n_ctx=64, threads=2) as m:
            m.logits(TOKENS)
        return seen, noise.injected

    both, injected = deltas(energy)
    alone = {}
    for name in energy:
        alone |= deltas({name: energy[name]})[0]
    assert sorted(both) == sorted(alone) and len(both) == 2
    assert all(np.array_equal(both[n], alone[n]) for n in both)
    assert injected == pytest.approx(2.5 + 0.7, rel=1e-6)
