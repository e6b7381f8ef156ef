"""`convert --target-size / --target-bpw` end to end on a small checkpoint: the file fits the budget and comes
within 1 % of it, the plan is a preset that reproduces the file byte for byte, every tensor equals what
llama.cpp's own llama-quantize writes for the planned type (same F32 weights, same imatrix), the same inputs
give the same plan, a larger budget never a larger estimated error, and refusals are one line with nothing
written."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from checkpoints import Spec
from gguf import GGUFReader

from marco_gguf import convert
from marco_gguf.base.errors import GGUFFileError, ImatrixError, OutputError, PlanError
from marco_gguf.quant.joint import Group, groups
from marco_gguf.quant.presets import load_preset
from marco_gguf.quant.sensitivity import Sensitivity

pytestmark = pytest.mark.slow

MINI = Spec(dtype="f32")  # rows of 256: every K and IQ type fits (the same fixture test_imatrix_quantize uses)
NANO = Spec(dtype="f32", expert_ff=384)  # another model: its imatrix does not fit MINI


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def f16_size(converted) -> int:
    return converted(MINI, "f16").path.stat().st_size


BUDGETS = [  # (reason, fraction of the F16 file, with the imatrix)
    ("about Q2_K's bits, IQ types available", 0.17, True),
    ("about Q3_K_M's bits", 0.25, True),
    ("about Q4_K_M's bits", 0.33, True),
    ("about Q6_K's bits", 0.45, True),
    ("about Q4_K_M's bits without an imatrix (no IQ type)", 0.33, False),
    ("between Q8_0 and F16 without an imatrix", 0.55, False),
]


@pytest.mark.parametrize("reason,fraction,with_imatrix", BUDGETS, ids=[b[0] for b in BUDGETS])
def test_the_file_fits_the_budget_within_one_percent(
    reason, fraction, with_imatrix, f16_size, checkpoint, reference_imatrix, tmp_path
):
    budget = int(f16_size * fraction)
    imatrix = reference_imatrix(MINI) if with_imatrix else None
    r = convert(checkpoint(MINI), target_size=budget, imatrix=imatrix, outdir=tmp_path, threads=2)
    size = r.path.stat().st_size
    assert 0.99 * budget <= size <= budget
    assert r.plan is not None and r.plan["plan"]["size_bytes"] == size  # the planner priced the file exactly
    assert r.path.name == f"Marco-Test-Instruct{'-i1' if with_imatrix else ''}-P{budget}B.gguf"
    fields = GGUFReader(r.path).fields
    assert fields["quantize.plan.budget_bytes"].contents() == budget
    assert fields["quantize.plan.target"].contents() == f"{budget}B"
    if not with_imatrix:
        assert not any(q.startswith("IQ") for q in r.tensor_types)


@pytest.mark.parametrize("bpw", [3.0, 4.5, 6.0])
def test_bits_per_weight_target(bpw, checkpoint, reference_imatrix, tmp_path):
    r = convert(checkpoint(MINI), target_bpw=bpw, imatrix=reference_imatrix(MINI), outdir=tmp_path, threads=2)
    assert 0.99 * bpw <= r.bits_per_weight <= bpw
    assert r.path.name == f"Marco-Test-Instruct-i1-P{bpw:g}BPW.gguf"


def test_the_plan_reproduces_the_file_and_equals_llama_quantize(
    f16_size, checkpoint, converted, reference_imatrix, llama_tool, tmp_path
):
    """The plan TOML, given back as --preset, writes the same bytes; llama-quantize given the same type per
    tensor (--tensor-type-file, exact names) over the F32 GGUF and the same imatrix writes the same tensors."""
    imatrix = reference_imatrix(MINI)
    plan_toml = tmp_path / "plan.toml"
    planned = convert(
        checkpoint(MINI), target_size=int(f16_size * 0.22), imatrix=imatrix, plan_out=plan_toml, outdir=tmp_path
    )
    assert len(set(planned.tensor_types)) >= 3  # a mixed plan, not one preset's types
    again = convert(checkpoint(MINI), preset=plan_toml, imatrix=imatrix, outfile=tmp_path / "again.gguf")
    assert sha(again.path) == sha(planned.path)
    assert load_preset(plan_toml).plan["budget_bytes"] == int(f16_size * 0.22)

    ours = GGUFReader(planned.path)
    quantized = [t for t in ours.tensors if t.tensor_type.name != "F32"]
    rules = tmp_path / "types.txt"
    rules.write_text("".join(f"^{t.name.replace('.', chr(92) + '.')}$={t.tensor_type.name}\n" for t in quantized))
    ref_path = tmp_path / "ref.gguf"
    subprocess.run(
        [
            str(llama_tool("llama-quantize")),
            "--imatrix",
            str(imatrix),
            "--tensor-type-file",
            str(rules),
            str(converted(MINI, "f32").path),
            str(ref_path),
            "Q8_0",
            "2",
        ],
        check=True,
        capture_output=True,
    )
    refs = {t.name: t for t in GGUFReader(ref_path).tensors}
    assert sorted(t.name for t in ours.tensors) == sorted(refs)
    for t in ours.tensors:
        assert t.tensor_type == refs[t.name].tensor_type, t.name
        assert bytes(t.data) == bytes(refs[t.name].data), t.name


def last_logits(path) -> np.ndarray:
    """The logits llama.cpp computes for the last of a few tokens (read from its context: without logits_all,
    llama-cpp-python keeps none)."""
    import llama_cpp

    from marco_gguf.llama.loader import load_model

    llm = load_model(path, n_ctx=64, threads=2)
    try:
        llm.eval([1, 2, 3, 4, 5, 6, 7, 8])
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float64)
    finally:
        llm.close()


def test_planned_files_run_in_llama_cpp(f16_size, checkpoint, converted, reference_imatrix, tmp_path):
    """Plans load in llama.cpp (a low-bit one with IQ types included) and a larger plan's logits follow the
    F16 file's more closely than a smaller plan's."""
    corr = []
    for fraction in (0.2, 0.45):
        r = convert(
            checkpoint(MINI), target_size=int(f16_size * fraction), imatrix=reference_imatrix(MINI), outdir=tmp_path
        )
        assert fraction > 0.2 or any(q.startswith("IQ") for q in r.tensor_types)
        planned, f16 = last_logits(r.path), last_logits(converted(MINI, "f16").path)
        assert np.isfinite(planned).all()
        corr.append(np.corrcoef(planned, f16)[0, 1])
    assert 0 < corr[0] < corr[1] < 1


def test_same_inputs_same_plan_and_the_cache(f16_size, checkpoint, reference_imatrix, tmp_path):
    """Two fresh measurements give the same plan and file; a third run beside them measures nothing."""
    budget, imatrix = int(f16_size * 0.3), reference_imatrix(MINI)
    runs = []
    for folder in ("a", "b", "a"):
        out = tmp_path / folder
        plan = out / "plan.toml"
        r = convert(checkpoint(MINI), target_size=budget, imatrix=imatrix, outdir=out, plan_out=plan, force=True)
        runs.append((r.plan, sha(r.path), plan.read_text()))
    (first, h1, toml1), (second, h2, toml2), (third, h3, toml3) = runs
    assert h1 == h2 == h3 and toml1 == toml2 == toml3
    assert first["measured"] > 0 and first["cached"] == 0 and second["measured"] == first["measured"]
    assert (third["measured"], third["cached"]) == (0, first["measured"])


def test_a_larger_budget_never_gives_a_larger_estimated_error(f16_size, checkpoint, reference_imatrix, tmp_path):
    errors, sizes = [], []
    for fraction in (0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7):
        r = convert(
            checkpoint(MINI),
            target_size=int(f16_size * fraction),
            imatrix=reference_imatrix(MINI),
            outdir=tmp_path,
            force=True,
        )
        errors.append(r.plan["plan"]["estimated_error"])
        sizes.append(r.path.stat().st_size)
    assert all(b <= a for a, b in itertools.pairwise(errors)) and errors[-1] < errors[0] / 10
    assert sizes == sorted(sizes)


REFUSALS = [  # (reason, keywords, imatrix: None / "mini" / "nano" / "damaged", error, message fragment)
    ("below the smallest file", {"target_size": 100_000}, "mini", PlanError, "is below the smallest file"),
    ("above F16", {"target_size": "1GB"}, "mini", PlanError, "is above the F16 file"),
    ("below what non-IQ types make, no imatrix", {"target_bpw": 2.4}, None, PlanError, "the plan needs IQ types"),
    ("a preset and a target", {"target_bpw": 4.0, "preset": "q4_k_m"}, None, PlanError, "not both"),
    ("--tensor-type and a target", {"target_bpw": 4.0, "tensor_types": ["attn_q=q8_0"]}, None, PlanError, "not both"),
    ("--types without a target", {"types": ["q4_k"]}, None, PlanError, "go with --target-size or --target-bpw"),
    ("an IQ type without an imatrix", {"target_bpw": 4.0, "types": ["iq4_xs"]}, None, PlanError, "IQ4_XS is an IQ"),
    ("an imatrix for another model", {"target_bpw": 4.0}, "nano", ImatrixError, "ffn_down_exps"),
    ("a damaged imatrix", {"target_bpw": 4.0}, "damaged", ImatrixError, "imatrix"),
]


@pytest.mark.parametrize("reason,kw,im,error,fragment", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(reason, kw, im, error, fragment, checkpoint, reference_imatrix, tmp_path):
    imatrix = None
    if im in ("mini", "nano"):
        imatrix = reference_imatrix(MINI if im == "mini" else NANO)
    elif im == "damaged":
        imatrix = tmp_path / "damaged.imatrix.gguf"
        shutil.copy(reference_imatrix(MINI), imatrix)
        imatrix.write_bytes(imatrix.read_bytes()[: imatrix.stat().st_size // 2])
    out = tmp_path / "out"
    with pytest.raises(error, match=fragment) as caught:
        convert(
            checkpoint(MINI),
            imatrix=imatrix,
            outdir=out,
            plan_out=out / "plan.toml" if "types" not in kw else None,
            **kw,
        )
    assert "\n" not in caught.value.message
    assert not out.exists() or not any(out.iterdir())


def test_an_existing_plan_file_is_kept(checkpoint, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text("mine")
    with pytest.raises(OutputError, match=r"plan\.toml: already exists"):
        convert(checkpoint(MINI), target_bpw=4.0, plan_out=plan, outdir=tmp_path)
    assert plan.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["plan.toml"]


def tensor_types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}


def fake_sensitivity(gain):
    """quant.plan's `sensitivity` with chosen gains (gain(name) -> float) instead of measured ones."""

    def measured(path, quant, errors, **_):
        gains = {t.name: gain(t.name) for t in quant}
        return Sensitivity(gains, 0, Path("unused.json"), "k")

    return measured


def fake_groups(ratio):
    """quant.plan's `measure_groups` finding each group at `ratio(group)` x its estimate, unmeasured."""

    def measured(path, chosen, errors, gains, **_):
        return tuple(Group(g, len(ns), 1.0, ratio(g)) for g, ns in groups(chosen).items())

    return measured


def test_gains_weigh_the_errors(f16_size, checkpoint, converted, reference_imatrix, tmp_path, monkeypatch):
    """Uniform gains change no choice, only the estimate's scale; a heavy gain buys one tensor its best type."""
    budget, imatrix, q8 = int(f16_size * 0.25), reference_imatrix(MINI), converted(MINI, "q8_0").path
    plain = convert(checkpoint(MINI), target_size=budget, imatrix=imatrix, outdir=tmp_path / "plain")
    monkeypatch.setattr("marco_gguf.quant.plan.sensitivity", fake_sensitivity(lambda _: 3.0))
    monkeypatch.setattr("marco_gguf.quant.plan.measure_groups", fake_groups(lambda _: 1.0))
    uniform = convert(checkpoint(MINI), target_size=budget, imatrix=imatrix, outdir=tmp_path / "u", sensitivity=q8)
    assert tensor_types(uniform.path) == tensor_types(plain.path)
    assert uniform.plan["plan"]["estimated_error"] == pytest.approx(3 * plain.plan["plan"]["estimated_error"])
    fields = GGUFReader(uniform.path).fields
    assert "measured sensitivity" in fields["quantize.plan.objective"].contents()
    assert fields["quantize.plan.sensitivity"].contents() == q8.name
    heavy = "blk.0.attn_v.weight"
    assert tensor_types(plain.path)[heavy] not in ("F16", "Q8_0")  # else the case shows nothing
    monkeypatch.setattr("marco_gguf.quant.plan.sensitivity", fake_sensitivity(lambda n: 1e12 if n == heavy else 1.0))
    steered = convert(checkpoint(MINI), target_size=budget, imatrix=imatrix, outdir=tmp_path / "s", sensitivity=q8)
    assert tensor_types(steered.path)[heavy] == "F16"  # its least-error type
    assert steered.path.stat().st_size <= budget


def test_a_group_measured_heavier_than_estimated_is_planned_again(
    f16_size, checkpoint, converted, reference_imatrix, tmp_path, monkeypatch
):
    """The first plan's groups, noised at once, set each group's gains: the output side measured 10^12 x its
    estimate takes its least-error type in the second plan, which the summary reports as planned again."""
    budget, imatrix, q8 = int(f16_size * 0.25), reference_imatrix(MINI), converted(MINI, "q8_0").path
    monkeypatch.setattr("marco_gguf.quant.plan.sensitivity", fake_sensitivity(lambda _: 1.0))
    monkeypatch.setattr("marco_gguf.quant.plan.measure_groups", fake_groups(lambda _: 1.0))
    first = convert(checkpoint(MINI), target_size=budget, imatrix=imatrix, outdir=tmp_path / "a", sensitivity=q8)
    assert tensor_types(first.path)["token_embd.weight"] != "F16" and first.plan["replanned"] is False
    heavy = fake_groups(lambda g: 1e12 if g == "token_embd" else 1.0)
    monkeypatch.setattr("marco_gguf.quant.plan.measure_groups", heavy)
    second = convert(checkpoint(MINI), target_size=budget, imatrix=imatrix, outdir=tmp_path / "b", sensitivity=q8)
    assert tensor_types(second.path)["token_embd.weight"] == "F16" and second.plan["replanned"] is True
    assert [(g["name"], g["ratio"]) for g in second.plan["groups"]] == [("token_embd", 1e12), ("the rest", 1.0)]
    assert second.path.stat().st_size <= budget


def test_measured_sensitivity_plans_and_is_cached(f16_size, checkpoint, converted, reference_imatrix, tmp_path):
    """Measured on the fixture's Q8_0: a gain for every quantized tensor, kept beside the output for the next
    budget, the same again from scratch; the plan says what it was measured on."""
    q8, imatrix, plan = converted(MINI, "q8_0").path, reference_imatrix(MINI), tmp_path / "plan.toml"
    first = convert(
        checkpoint(MINI),
        target_size=int(f16_size * 0.25),
        imatrix=imatrix,
        outdir=tmp_path / "a",
        sensitivity=q8,
        plan_out=plan,
    )
    [cache] = (tmp_path / "a").glob("*.sensitivity-*.json")
    doc = json.loads(cache.read_text())
    quantized = [n for n, q in tensor_types(first.path).items() if q != "F32"]
    assert sorted(doc["tensors"]) == sorted(quantized)
    assert all(k > 0 and e > 0 for k, e in doc["tensors"].values())
    [joint] = (tmp_path / "a").glob("*.joint-*.json")
    assert [g["name"] for g in first.plan["groups"]] == ["token_embd", "the rest"]
    assert all(g["measured"] > 0 and g["estimated"] > 0 for g in first.plan["groups"])
    stamp = cache.stat().st_mtime_ns
    convert(checkpoint(MINI), target_size=int(f16_size * 0.3), imatrix=imatrix, outdir=tmp_path / "a", sensitivity=q8)
    assert cache.stat().st_mtime_ns == stamp  # read, not measured again
    assert len(json.loads(joint.read_text())["plans"]) == 2  # the groups of another first plan, kept beside
    again = convert(
        checkpoint(MINI), target_size=int(f16_size * 0.25), imatrix=imatrix, outdir=tmp_path / "b", sensitivity=q8
    )
    assert json.loads(next((tmp_path / "b").glob("*.sensitivity-*.json")).read_text())["tensors"] == doc["tensors"]
    assert sha(again.path) == sha(first.path)
    assert f"sensitivity: measured on {q8.name}" in plan.read_text()
    remade = convert(checkpoint(MINI), preset=plan, imatrix=imatrix, outdir=tmp_path / "c")
    assert sha(remade.path) == sha(first.path)  # the plan file alone makes the same file again


SENSITIVITY_REFUSALS = [  # (reason, keywords, which GGUF: "mini" / "nano" / "text", error, message fragment)
    ("--sensitivity without a target", {}, "mini", PlanError, "give --target-size or --target-bpw with it"),
    ("a GGUF of another model", {"target_bpw": 4.0}, "nano", PlanError, "a GGUF of another model"),
    ("not a GGUF", {"target_bpw": 4.0}, "text", GGUFFileError, "notes.txt"),
]


@pytest.mark.parametrize(
    "reason,kw,which,error,fragment", SENSITIVITY_REFUSALS, ids=[r[0] for r in SENSITIVITY_REFUSALS]
)
def test_sensitivity_refusals(reason, kw, which, error, fragment, checkpoint, converted, tmp_path):
    if which == "text":
        model = tmp_path / "notes.txt"
        model.write_text("not a model\n")
    else:
        model = converted(MINI if which == "mini" else NANO, "q8_0").path
    out = tmp_path / "out"
    with pytest.raises(error, match=fragment) as caught:
        convert(checkpoint(MINI), outdir=out, sensitivity=model, **kw)
    assert "\n" not in caught.value.message
    assert not out.exists() or not any(out.iterdir())
