"""Planning's parts on their own: the allocator against brute force, targets and types as typed, llama.cpp's
decoder against gguf-py's, and the measured error against the same error computed over the whole tensor."""

from __future__ import annotations

import itertools
import random

import gguf
import numpy as np
import pytest
from gguf import MODEL_TENSOR as T
from gguf import GGMLQuantizationType as Q

from marco_gguf.arch.qwen3moe import Piece, PlannedTensor
from marco_gguf.base.errors import PlanError
from marco_gguf.llama.ggml import dequantize_rows, quantize_rows
from marco_gguf.quant.allocate import Option, allocate, pareto, total_error
from marco_gguf.quant.imatrix_file import Entry, Imatrix
from marco_gguf.quant.importance import Importance
from marco_gguf.quant.measure_types import (
    CANDIDATES,
    candidate_types,
    read_sample,
    sample_rows,
    tensor_weights,
    weighted_error,
)
from marco_gguf.quant.plan_target import parse_target, parse_types


def random_options(rng: random.Random, n_tensors: int, n_types: int) -> list[list[Option]]:
    """Tensors with types of random size and error, dominated ones included (as a real tensor's IQ4_NL is)."""
    out = []
    for _ in range(n_tensors):
        scale = rng.choice([1, 10, 100])
        out.append(
            [
                Option(Q.Q8_0, rng.randrange(1, 50) * scale, rng.random() * 10, rng.random() * 100 * scale)
                for _ in range(n_types)
            ]
        )
    return out


def brute_force(options, budget, cap=None):
    best = None
    for combo in itertools.product(*options):
        if sum(o.cost for o in combo) <= budget and (cap is None or sum(o.token_bytes for o in combo) <= cap):
            e = total_error(combo)
            best = e if best is None or e < best else best
    return best


@pytest.mark.parametrize("seed", range(12))
def test_allocation_is_the_exact_optimum(seed):
    """With a unit of one byte the DP is exact: the least total error any choice within the budget has."""
    rng = random.Random(seed)
    options = random_options(rng, rng.randrange(2, 6), rng.randrange(2, 5))
    low, high = sum(min(o.cost for o in t) for t in options), sum(max(o.cost for o in t) for t in options)
    for budget in sorted({low, (low + high) // 2, high, rng.randrange(low, high + 1)}):
        plan = allocate(options, budget, unit=1)
        assert sum(o.cost for o in plan) <= budget
        assert total_error(plan) == pytest.approx(brute_force(options, budget), rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_a_larger_budget_never_gives_a_larger_error(seed):
    """With a coarse unit (rounding every option up), error still never rises with the budget."""
    rng = random.Random(100 + seed)
    options = random_options(rng, 12, 6)
    low, high = sum(min(o.cost for o in t) for t in options), sum(max(o.cost for o in t) for t in options)
    errors = [total_error(allocate(options, b, unit=7)) for b in range(low + 7 * 12, high + 1, 13)]
    assert all(later <= earlier for earlier, later in itertools.pairwise(errors))
    assert errors[-1] < errors[0]


@pytest.mark.parametrize("seed", range(6))
def test_the_token_cap_holds_and_costs_error(seed):
    rng = random.Random(200 + seed)
    options = random_options(rng, 5, 4)
    budget = sum(max(o.cost for o in t) for t in options)
    free = allocate(options, budget, unit=1)
    least = sum(min(t, key=lambda o: (o.cost, o.error)).token_bytes for t in options)
    cap = (least + sum(o.token_bytes for o in free)) / 2
    capped = allocate(options, budget, unit=1, max_token_bytes=cap)
    assert sum(o.token_bytes for o in capped) <= cap
    assert total_error(capped) >= total_error(free)
    # a Lagrangian solution: never better than the true optimum under both constraints
    assert total_error(capped) >= brute_force(options, budget, cap) - 1e-9


def test_pareto_keeps_only_undominated_options():
    opts = [
        Option(Q.Q4_0, 10, 0, 5.0),
        Option(Q.IQ4_NL, 10, 0, 4.0),
        Option(Q.Q5_0, 12, 0, 4.5),
        Option(Q.Q8_0, 20, 0, 1),
    ]
    assert [o.type for o in pareto(opts)] == [Q.IQ4_NL, Q.Q8_0]


TARGETS = [  # (reason, size, bpw, label, bytes or bpw)
    ("decimal gigabytes, as disks and the hub count them", "8GB", None, "8GB", 8 * 10**9),
    ("binary units spelled out", "7.5GiB", None, "7.5GiB", int(7.5 * 2**30)),
    ("lower case units", "512mb", None, "512MB", 512 * 10**6),
    ("a plain number is bytes", "123456", None, "123456B", 123456),
    ("a library caller's int", 2_000_000, None, "2000000B", 2_000_000),
    ("bits per weight", None, 3.6, "3.6BPW", 3.6),
]


@pytest.mark.parametrize("reason,size,bpw,label,value", TARGETS, ids=[t[0] for t in TARGETS])
def test_targets(reason, size, bpw, label, value):
    t = parse_target(size, bpw)
    assert (t.label, t.size if size is not None else t.bpw, t.name) == (label, value, f"P{label}")


BAD_TARGETS = [  # (reason, size, bpw, message fragment)
    ("both targets", "8GB", 3.6, "give one of --target-size and --target-bpw"),
    ("an unknown unit", "8 gigs", None, "--target-size '8 gigs': not a size"),
    ("zero bytes", "0GB", None, "--target-size '0GB': not a size"),
    ("a negative size", "-1GB", None, "not a size"),
    ("zero bits", None, 0.0, "--target-bpw 0.0: not a positive number"),
    ("not a number", None, float("nan"), "--target-bpw nan"),
]


@pytest.mark.parametrize("reason,size,bpw,fragment", BAD_TARGETS, ids=[t[0] for t in BAD_TARGETS])
def test_bad_targets(reason, size, bpw, fragment):
    with pytest.raises(PlanError, match=fragment.replace("(", r"\(").replace("?", r"\?")):
        parse_target(size, bpw)


def test_types():
    assert parse_types(["q4_k", "Q8_0", "q4_k"], imatrix=False) == (Q.Q8_0, Q.Q4_K)
    assert not any(q.name.startswith("IQ") for q in parse_types(None, imatrix=False))
    assert Q.IQ2_XXS in parse_types(None, imatrix=True)
    with pytest.raises(PlanError, match="--types: IQ3_S is an IQ type, which the plan uses only with an importance"):
        parse_types(["q4_k", "iq3_s"], imatrix=False)
    with pytest.raises(PlanError, match="--types: 'q3_k_m' is not a type the plan can use"):
        parse_types(["q3_k_m"], imatrix=True)


@pytest.mark.parametrize("q", [q for q in CANDIDATES if q != Q.F16], ids=lambda q: q.name)
def test_llama_cpp_decoder_equals_gguf_py(q):
    """dequantize_rows (ggml's to_float) reads llama.cpp's bytes as gguf-py's NumPy decoder does."""
    rng = np.random.default_rng(int(q))
    rows = (rng.standard_normal((6, 512)) * 0.05).astype(np.float32)
    vec = (rng.random(512) + 0.1).astype(np.float32)
    data = quantize_rows(q, rows, vec)
    ref = gguf.quants.dequantize(data.reshape(6, -1), q)
    np.testing.assert_array_equal(dequantize_rows(q, data, 512), ref)


def stack(n_exp: int = 4, rows: int = 64, cols: int = 256) -> tuple[PlannedTensor, np.ndarray]:
    w = (np.random.default_rng(7).standard_normal((n_exp * rows, cols)) * 0.05).astype(np.float32)
    return PlannedTensor(
        "blk.0.ffn_up_exps.weight", T.FFN_UP_EXP, 0, (n_exp, rows, cols), (Piece("w", 0, n_exp * rows),)
    ), w


def importance_for(t: PlannedTensor, counts: list[int]) -> Importance:
    rng = np.random.default_rng(3)
    sums = (rng.random(len(counts) * t.row_len) * 4).astype(np.float32)
    im = Imatrix({t.name: Entry(sums, np.array(counts))}, ["text"], 1, 64)
    return Importance(None, im, {t.name: im.importance(t.name)})  # type: ignore[arg-type]


@pytest.mark.parametrize("q", [Q.Q4_K, Q.IQ3_S, Q.Q8_0], ids=lambda q: q.name)
def test_measured_error_of_a_whole_sample_is_the_tensors_error(q):
    """Sampling every row gives exactly the error of the whole tensor as convert writes it (per-expert imatrix
    slices), decoded by gguf-py, with each expert weighed by its routing share (counts / tokens)."""
    t, w = stack()
    counts = [30, 10, 0, 24]  # 64 routings of 16 tokens at top-4; expert 2 never chosen
    imp = importance_for(t, counts)
    weights = tensor_weights(t, imp, experts_used=4, tied=True, final_norm=np.ones(t.row_len, np.float32))
    sample = read_sample(t, sample_rows(t, n=t.n_rows), lambda s, start, n: w[start : start + n])
    got = weighted_error(q, sample, weights)
    vec = imp.vectors[t.name].reshape(4, -1)
    expected = 0.0
    for e in range(4):
        rows = w[e * 64 : (e + 1) * 64]
        decoded = gguf.quants.dequantize(quantize_rows(q, rows, vec[e]).reshape(64, -1), q)
        share = counts[e] * 4 / sum(counts)
        expected += share * float((((decoded - rows).astype(np.float64) ** 2) * vec[e]).sum())
    assert got == pytest.approx(expected, rel=1e-9)


def test_sample_is_deterministic_and_stratified():
    t, _ = stack(n_exp=8, rows=100)
    rows = sample_rows(t, n=40)
    assert rows == sample_rows(t, n=40)
    assert [sum(1 for r in rows if r // 100 == e) for e in range(8)] == [5] * 8
    assert rows != sample_rows(t, n=40, seed=1)


CANDIDATE_CASES = [  # (reason, row length, imatrix entry, types expected absent)
    ("no imatrix: no IQ type", 256, None, {Q.IQ4_XS, Q.IQ2_XXS}),
    ("an imatrix, but no entry: none of the types llama.cpp refuses without one", 256, False, {Q.IQ2_XXS, Q.IQ3_XXS}),
    ("rows of 384 take no 256-block type", 384, True, {Q.Q4_K, Q.Q6_K, Q.IQ4_XS, Q.IQ2_XXS}),
]


@pytest.mark.parametrize("reason,cols,entry,absent", CANDIDATE_CASES, ids=[c[0] for c in CANDIDATE_CASES])
def test_candidates(reason, cols, entry, absent):
    t, _ = stack(cols=cols)
    imp = None if entry is None else importance_for(t, [1, 1, 1, 1])
    if entry is False:
        imp = Importance(None, imp.imatrix, {})  # type: ignore[union-attr,arg-type]
    got = set(candidate_types(t, CANDIDATES, importance=imp))
    assert not got & absent and Q.Q8_0 in got
