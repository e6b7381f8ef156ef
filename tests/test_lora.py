"""LoRA adapters made by PEFT: merged while converting (against PEFT's merge_and_unload in float32), and refused
with one line when they do not fit the base."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from adapters import EXPERTS, Adapter, make_adapter, merged_logits, peft_logits, per_expert_copy, save_merged
from checkpoints import Spec, reference_logits
from gguf import GGUFReader
from test_parity import MAX_REL_ERR, gguf_logits

from marco_gguf.base.errors import AdapterError
from marco_gguf.convert import convert
from marco_gguf.export.ollama import export_ollama
from marco_gguf.gguf_io.lora_gguf import check_adapter, write_lora_gguf
from marco_gguf.llama.lora import Adapters, LoraFile

N_TOKENS = 48
BASE = Spec(seed=3)

ADAPTERS = [
    ("attention q/k/v/o", Adapter()),
    ("router and fused experts (target_parameters) plus q_proj", Adapter(("q_proj", "gate"), EXPERTS, seed=1)),
    ("rsLoRA, rank 8, alpha 4", Adapter(("v_proj", "o_proj"), r=8, alpha=4.0, use_rslora=True, seed=2)),
    ("modules_to_save: a retrained embedding on a tied base", Adapter(("v_proj",), modules_to_save=("embed_tokens",))),
    (
        "rank_pattern and alpha_pattern per module",
        Adapter(rank_pattern=(("k_proj", 2),), alpha_pattern=(("o_proj", 32.0),)),
    ),
]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, checkpoint):
    made: dict = {}

    def get(a: Adapter):
        if a not in made:
            made[a] = make_adapter(checkpoint(BASE), tmp_path_factory.mktemp("adapter") / "my-adapter", a)
        return made[a]

    return get


def tokens() -> list[int]:
    return [int(t) for t in np.random.default_rng(11).integers(0, 576, N_TOKENS)]


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float((np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)).max())


@pytest.mark.slow
@pytest.mark.parametrize("reason,spec", ADAPTERS, ids=[c[0] for c in ADAPTERS])
def test_merged_f32_gguf_logits_equal_peft_merge_and_unload(reason, spec, checkpoint, adapter, tmp_path):
    base, folder = checkpoint(BASE), adapter(spec)
    result = convert(base, preset="f32", lora=folder, outdir=tmp_path, threads=2)
    ref = merged_logits(base, folder, tokens()).numpy()
    got = gguf_logits(result.path, tokens())
    moved = rel_err(reference_logits(base, tokens()).numpy(), ref)
    print(f"{reason}: rel err {rel_err(got, ref):.3e}; the adapter moves the logits by {moved:.3e}")
    assert moved > 100 * MAX_REL_ERR  # the adapter matters, so equality is not the base's
    assert rel_err(got, ref) <= MAX_REL_ERR
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()
    fields = GGUFReader(result.path).fields
    assert fields["general.lora.name"].contents() == "my-adapter"
    assert result.path.name == f"{base.name}-my-adapter-F32.gguf"


# --- GGUF adapters: the vendored convert_lora_to_gguf.py's file, and llama.cpp applying it ---

SCRIPT_CASES = [  # (reason, adapter, outtype): adapters the script converts correctly
    ("attention adapter, F32", Adapter(), "f32"),
    ("attention adapter, F16", Adapter(), "f16"),
    ("attention adapter, BF16", Adapter(), "bf16"),
    ("attention adapter, Q8_0 (lora_b rows of rank 4 fall back to F16)", Adapter(), "q8_0"),
    ("rank_pattern: per-module ranks, one alpha", Adapter(rank_pattern=(("k_proj", 2),), seed=4), "f16"),
    ("rank 32: Q8_0 lora_b too", Adapter(("q_proj", "v_proj"), r=32, alpha=16.0, seed=5), "q8_0"),
]


@pytest.mark.slow
@pytest.mark.parametrize("reason,spec,outtype", SCRIPT_CASES, ids=[c[0] for c in SCRIPT_CASES])
def test_lora_gguf_byte_identical_to_convert_lora_to_gguf(
    reason, spec, outtype, checkpoint, adapter, llamacpp_src, tmp_path
):
    base, folder = checkpoint(BASE), adapter(spec)
    ref = tmp_path / "ref.gguf"
    cmd = [sys.executable, str(llamacpp_src / "convert_lora_to_gguf.py"), str(folder), "--base", str(base)]
    subprocess.run([*cmd, "--outtype", outtype, "--outfile", str(ref)], check=True, capture_output=True, cwd=tmp_path)
    ours = write_lora_gguf(folder, base=base, outfile=tmp_path / "ours.gguf", outtype=outtype)
    assert ours.path.read_bytes() == ref.read_bytes()
    assert not ours.folded_scales


def adapter_logits(model, adapter_path, tokens: list[int], scale: float) -> np.ndarray:
    llm = llama_cpp.Llama(str(model), n_ctx=256, logits_all=True, type_k=0, type_v=0, verbose=False, n_threads=2)
    adapters = Adapters(llm.model, model, [LoraFile(adapter_path, scale)])
    adapters.apply(llm.ctx)
    llm.eval(tokens)
    scores = np.array(llm.scores[: len(tokens)])
    adapters.close()
    llm.close()
    return scores


APPLIED = [c for c in ADAPTERS if not c[1].modules_to_save]


@pytest.mark.slow
@pytest.mark.parametrize("reason,spec", APPLIED, ids=[c[0] for c in APPLIED])
def test_gguf_adapter_in_llama_cpp_equals_peft_model(reason, spec, checkpoint, converted, adapter, tmp_path):
    base, folder = checkpoint(BASE), adapter(spec)
    gguf_adapter = write_lora_gguf(folder, base=base, outfile=tmp_path / "a.gguf").path
    model = converted(BASE, "f32").path
    ref = peft_logits(base, folder, tokens()).numpy()
    got = adapter_logits(model, gguf_adapter, tokens(), 1.0)
    print(f"{reason}: rel err {rel_err(got, ref):.3e}")
    assert rel_err(got, ref) <= MAX_REL_ERR
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()
    # scale 0: the base model's logits, as without the adapter
    base_ref = reference_logits(base, tokens()).numpy()
    assert rel_err(adapter_logits(model, gguf_adapter, tokens(), 0.0), base_ref) <= MAX_REL_ERR


# --- refusals: one line naming the file and the field or tensor, nothing written ---


def edited(folder: Path, tmp_path: Path, **changes) -> Path:
    """A copy of the adapter folder with adapter_config.json's keys changed (None removes a key)."""
    copy = tmp_path / "edited-adapter"
    shutil.copytree(folder, copy)
    path = copy / "adapter_config.json"
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        cfg.pop(k) if v is None else cfg.__setitem__(k, v)
    path.write_text(json.dumps(cfg))
    return copy


CONFIG_REFUSALS = [  # (reason, changes to adapter_config.json, expected message)
    ("DoRA", {"use_dora": True}, "use_dora is set: DoRA (weight-decomposed LoRA"),
    ("another PEFT method", {"peft_type": "IA3"}, "peft_type is 'IA3'; only LoRA adapters"),
    ("rank disagrees with the tensors", {"r": 8}, "[4, 256] and its lora_B [128, 4], but rank 8 (adapter_config.json)"),
    ("alpha is not a number", {"lora_alpha": "eight"}, "lora_alpha is 'eight' (a string), expected"),
    ("rank missing", {"r": None}, "adapter_config.json: r "),
    ("a target the base lacks", {"target_modules": ["c_attn"]}, "target_modules names 'c_attn', which the base"),
    ("a target regex matching nothing", {"target_modules": ".*c_attn"}, "target_modules '.*c_attn' matches no module"),
    ("made for another model class", {"auto_mapping": {"base_model_class": "LlamaForCausalLM"}}, "'LlamaForCausalLM'"),
    ("aLoRA", {"alora_invocation_tokens": [1, 2]}, "alora_invocation_tokens is set: aLoRA"),
    ("rsLoRA with a rank_pattern", {"use_rslora": True, "rank_pattern": {"k_proj": 2}}, "use_rslora with rank_pattern"),
]


@pytest.mark.parametrize("reason,changes,message", CONFIG_REFUSALS, ids=[c[0] for c in CONFIG_REFUSALS])
def test_bad_adapter_config_refused_in_one_line(reason, changes, message, checkpoint, adapter, tmp_path):
    folder = edited(adapter(Adapter()), tmp_path, **changes)
    out = tmp_path / "out"
    for call in (
        lambda: convert(checkpoint(BASE), preset="f32", lora=folder, outdir=out, threads=2),
        lambda: write_lora_gguf(folder, base=checkpoint(BASE), outfile=out / "a.gguf"),
    ):
        with pytest.raises(AdapterError) as e:
            call()
        assert message in e.value.message and "\n" not in e.value.message
        assert "adapter_config.json" in e.value.message
    assert not out.exists() or not any(out.iterdir())


def test_damaged_adapter_weights_refused(checkpoint, adapter, tmp_path):
    folder = edited(adapter(Adapter()), tmp_path)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors: truncated: tensor .* ends at byte"):
        write_lora_gguf(folder, base=checkpoint(BASE), outfile=tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()


OTHER_BASES = [  # (reason, the spec the adapter was trained on, adapter, expected message against BASE)
    ("a deeper base (3 layers)", Spec(seed=3, layers=3), Adapter(), "is for layer 2, but the base has 2 layers"),
    ("other k/v widths (4 KV heads)", Spec(seed=3, kv_heads=4), Adapter(), "its lora_B [256, 4], but rank 4"),
    (
        "more experts (32)",
        Spec(seed=3, experts=32),
        Adapter(("gate",), EXPERTS),
        "[512, 128], but rank 4 for each of 16 experts (adapter",
    ),
]


@pytest.mark.parametrize("reason,other,spec,message", OTHER_BASES, ids=[c[0] for c in OTHER_BASES])
def test_adapter_for_another_base_refused(reason, other, spec, message, checkpoint, tmp_path):
    folder = make_adapter(checkpoint(other), tmp_path / "other-adapter", spec)
    with pytest.raises(AdapterError) as e:
        convert(checkpoint(BASE), preset="f32", lora=folder, outdir=tmp_path / "out", threads=2)
    assert message in e.value.message and "adapter_model.safetensors" in e.value.message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_modules_to_save_cannot_be_a_gguf_adapter(checkpoint, adapter, tmp_path):
    folder = adapter(Adapter(("v_proj",), modules_to_save=("embed_tokens",)))
    with pytest.raises(
        AdapterError, match=re.escape("modules_to_save replaces model.embed_tokens.weight; a GGUF adapter")
    ):
        write_lora_gguf(folder, base=checkpoint(BASE), outfile=tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()


def test_gguf_adapter_checked_against_the_model(checkpoint, converted, adapter, tmp_path):
    a = write_lora_gguf(adapter(Adapter()), base=checkpoint(BASE), outfile=tmp_path / "a.gguf").path
    assert check_adapter(a, converted(BASE, "f32").path) == 8.0
    other = converted(Spec(seed=3, kv_heads=4), "f32").path
    with pytest.raises(
        AdapterError, match=r"blk.0.attn_k.weight is \[256, 256\] in .*, but lora_a \[4, 256\], lora_b \[128, 4\]"
    ):
        check_adapter(a, other)
    with pytest.raises(
        AdapterError, match=re.escape("general.type / adapter.type are 'model' / None, expected 'adapter' / 'lora'")
    ):
        check_adapter(other, other)
    with pytest.raises(AdapterError, match=re.escape("--lora-scaled 'a.gguf': expected FILE:SCALE")):
        LoraFile.parse_scaled("a.gguf")
    assert LoraFile.parse_scaled("C:/x/a.gguf:0.5") == LoraFile(Path("C:/x/a.gguf"), 0.5)


QUANT_CASES = [  # (reason, adapter, preset): the merge happens before quantization, exactly as PEFT's
    ("attention adapter, Q8_0", Adapter(), "q8_0"),
    ("router and fused experts, F16", Adapter(("q_proj", "gate"), EXPERTS, seed=1), "f16"),
    ("router and fused experts, Q4_K_M", Adapter(("q_proj", "gate"), EXPERTS, seed=1), "q4_k_m"),
    ("modules_to_save embedding, Q8_0 (output written from the old embedding)", ADAPTERS[3][1], "q8_0"),
]


@pytest.mark.slow
@pytest.mark.parametrize("reason,spec,preset", QUANT_CASES, ids=[c[0] for c in QUANT_CASES])
def test_merged_quants_equal_converting_peft_merged_checkpoint(reason, spec, preset, checkpoint, adapter, tmp_path):
    base, folder = checkpoint(BASE), adapter(spec)
    merged = tmp_path / "peft-merged"
    save_merged(base, folder, merged)
    ref = GGUFReader(convert(merged, preset=preset, outdir=tmp_path / "ref", threads=2).path)
    ours = GGUFReader(convert(base, preset=preset, lora=folder, outdir=tmp_path / "ours", threads=2).path)
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for t, r in zip(ours.tensors, ref.tensors):
        assert (t.tensor_type, bytes(t.data)) == (r.tensor_type, bytes(r.data)), t.name


# --- the commands ---

CLI = [sys.executable, "-m", "marco_gguf"]


def run_json(*args) -> dict:
    proc = subprocess.run([*CLI, *map(str, args), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_commands_merge_write_and_chat_with_an_adapter(checkpoint, converted, adapter, tmp_path):
    """convert --lora, lora, and chat --lora: greedy chat with the GGUF adapter on the base says what the merged
    model says (and not what the base says)."""
    base, folder = checkpoint(BASE), adapter(ADAPTERS[1][1])
    merged = run_json("convert", base, "--lora", folder, "--preset", "f32", "--outdir", tmp_path, "-q")
    assert merged["lora"] == str(folder) and Path(merged["path"]).is_file()
    written = run_json("lora", folder, "--base", base, "-o", tmp_path / "a.gguf", "-q")
    assert written["kinds"] == ["attn_q", "ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
    ask = ("-p", "Hello there", "--temp", "0", "--max-tokens", "12")
    with_adapter = run_json("chat", converted(BASE, "f32").path, "--lora", written["path"], *ask)
    assert with_adapter["text"] == run_json("chat", merged["path"], *ask)["text"]
    assert with_adapter["text"] != run_json("chat", converted(BASE, "f32").path, *ask)["text"]
    off = run_json("chat", converted(BASE, "f32").path, "--lora-scaled", f"{written['path']}:0", *ask)
    assert off["text"] == run_json("chat", converted(BASE, "f32").path, *ask)["text"]  # scale 0: the base


def test_chat_and_serve_refuse_a_wrong_adapter_in_one_line(converted):
    model = converted(BASE, "f32").path
    for args in (
        ["chat", model, "--lora", model, "-p", "Hi"],
        ["serve", model, "--lora", model, "--port", "0"],
    ):
        proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1
        assert "general.type / adapter.type are 'model' / None, expected 'adapter' / 'lora'" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 2  # the error and its hint


def test_ollama_modelfile_names_the_adapter(checkpoint, converted, adapter, tmp_path):
    a = write_lora_gguf(adapter(Adapter()), base=checkpoint(BASE), outfile=tmp_path / "adapters" / "a.gguf").path
    model = converted(BASE, "f32").path
    r = export_ollama(model, outdir=tmp_path / "m", lora=a)
    lines = r.modelfile.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("FROM "))
    assert lines[start + 1] == "ADAPTER ../adapters/a.gguf"  # Ollama resolves it against the Modelfile's folder
    assert r.as_dict()["adapter"] == str(a)
    with pytest.raises(AdapterError, match="expected 'adapter' / 'lora'"):
        export_ollama(model, outdir=tmp_path / "n", lora=model)
    assert not (tmp_path / "n").exists()


def test_per_expert_adapter_layout_equals_the_fused_one(checkpoint, adapter, tmp_path):
    """transformers 4.x adapters hold one module per expert: rewritten so, the fused adapter gives the same tensors
    (merged F32 file and GGUF adapter alike)."""
    base, fused = checkpoint(BASE), adapter(ADAPTERS[1][1])
    split = per_expert_copy(fused, tmp_path / "per-expert", BASE.experts, BASE.expert_ff)
    for kind in ("merged", "adapter"):
        files = []
        for folder in (fused, split):
            out = tmp_path / kind / folder.name
            if kind == "merged":
                files.append(convert(base, preset="f32", lora=folder, outdir=out, threads=2).path)
            else:
                files.append(write_lora_gguf(folder, base=base, outfile=out / "a.gguf").path)
        ref, ours = (GGUFReader(f) for f in files)
        assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
        for t, r in zip(ours.tensors, ref.tensors):
            assert bytes(t.data) == bytes(r.data), f"{kind}: {t.name}"


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
def test_expert_adapter_gguf_equals_the_script_on_its_per_expert_layout(
    outtype, checkpoint, adapter, llamacpp_src, tmp_path
):
    """The script cannot read PEFT's fused-expert adapters ("Unprocessed experts") but stacks per-expert ones
    (LoraTorchTensor + torch.stack): on the same adapter in that layout, its file is ours for the fused one."""
    base, fused = checkpoint(BASE), adapter(ADAPTERS[1][1])
    split = per_expert_copy(fused, tmp_path / "per-expert", BASE.experts, BASE.expert_ff)
    ref = tmp_path / "ref.gguf"
    cmd = [sys.executable, str(llamacpp_src / "convert_lora_to_gguf.py"), str(split), "--base", str(base)]
    subprocess.run([*cmd, "--outtype", outtype, "--outfile", str(ref)], check=True, capture_output=True, cwd=tmp_path)
    assert (
        write_lora_gguf(split, base=base, outfile=tmp_path / "split.gguf", outtype=outtype).path.read_bytes()
        == ref.read_bytes()
    )
    ours = GGUFReader(write_lora_gguf(fused, base=base, outfile=tmp_path / "fused.gguf", outtype=outtype).path)
    assert [(t.name, bytes(t.data)) for t in ours.tensors] == [(t.name, bytes(t.data)) for t in GGUFReader(ref).tensors]
