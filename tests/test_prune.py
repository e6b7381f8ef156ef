"""`prune`: a pruned F32 GGUF runs as transformers' forward of the same model with only the kept experts;
pruning a GGUF and pruning its checkpoint give the same bytes; llama.cpp loads the result, Ollama's export
takes it; refusals leave nothing behind."""

from __future__ import annotations

import hashlib
import json
import subprocess

import numpy as np
import pytest
import torch
from checkpoints import Spec
from gguf import GGUFReader
from test_parity import MAX_REL_ERR, N_TOKENS, gguf_logits
from typer.testing import CliRunner

from marco_gguf.base.errors import PruneError
from marco_gguf.cli.app import app
from marco_gguf.experts.prune import choose_experts, prune
from marco_gguf.experts.usage import expert_usage
from marco_gguf.quant.imatrix import compute_imatrix, read_text
from marco_gguf.quant.imatrix_file import read_imatrix

MODEL = Spec(dtype="f32")  # 2 layers, 16 experts, top-4
OTHER = Spec(dtype="f32", seed=5)  # same shapes, other weights
DEEPER = Spec(dtype="f32", layers=3)
CTX = 64


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    body, _ = read_text(None)
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(body[:4000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def usage(converted, text, tmp_path_factory):
    """usage(spec) -> a usage file measured on that model's F32 GGUF."""
    made = {}

    def get(spec):
        if spec not in made:
            made[spec] = tmp_path_factory.mktemp("usage") / "usage.json"
            expert_usage(converted(spec, "f32").path, [text], ctx=CTX, usage=made[spec])
        return made[spec]

    return get


def pruned_reference(folder, kept):
    """transformers' float32 model with only the kept experts: a config with N experts, the kept weights."""
    from transformers import Qwen3MoeForCausalLM

    full = Qwen3MoeForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    config = full.config
    config.num_experts = len(kept[0])
    small = Qwen3MoeForCausalLM(config).eval()
    state = full.state_dict()
    for layer, rows in enumerate(kept):
        for key in ("mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
            name = f"model.layers.{layer}.{key}"
            state[name] = state[name][rows]
    small.load_state_dict(state)
    return small


LOGIT_CASES = [  # (reason, keep, method)
    ("REAP, half the experts", 8, "reap"),
    ("frequency, down to the experts per token", 4, "frequency"),
    ("REAP, all but one", 15, "reap"),
]


@pytest.mark.slow
@pytest.mark.parametrize("reason,keep,method", LOGIT_CASES, ids=[c[0] for c in LOGIT_CASES])
def test_pruned_logits_equal_transformers_with_kept_experts(
    reason, keep, method, checkpoint, converted, usage, tmp_path
):
    r = prune(converted(MODEL, "f32").path, keep=keep, usage=usage(MODEL), method=method, outfile=tmp_path / "p.gguf")
    fields = GGUFReader(r.path).fields
    assert fields["qwen3moe.expert_count"].contents() == keep
    kept = np.array(fields["marco.prune.kept_experts"].contents()).reshape(MODEL.layers, keep).tolist()
    assert kept == r.kept and fields["marco.prune.method"].contents() == method
    tokens = [int(t) for t in np.random.default_rng(3).integers(0, 576, N_TOKENS)]
    with torch.no_grad():
        ref = pruned_reference(checkpoint(MODEL), kept)(torch.tensor([tokens])).logits[0].numpy()
    got = gguf_logits(r.path, tokens)
    rel = np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)
    print(f"{reason}: max relative error {rel.max():.3e}")
    assert rel.max() <= MAX_REL_ERR
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


FUSED = Spec(layout="fused", config_style="4.x")  # bf16, transformers-5 fused experts, 4.x config spelling

IDENTITY_CASES = [  # (reason, spec, preset, imatrix)
    ("F32", MODEL, "f32", False),
    ("Q8_0", MODEL, "q8_0", False),
    ("Q4_K_M (K-quants, more_bits rules decided for the whole model)", MODEL, "q4_k_m", False),
    ("Q4_K_M with an importance matrix (each kept expert its own slice)", MODEL, "q4_k_m", True),
    ("BF16 from fused expert stacks, 4.x config", FUSED, "bf16", False),
]


@pytest.mark.parametrize("reason,spec,preset,with_imatrix", IDENTITY_CASES, ids=[c[0] for c in IDENTITY_CASES])
def test_gguf_and_checkpoint_pruning_give_the_same_bytes(
    reason, spec, preset, with_imatrix, checkpoint, converted, usage, text, tmp_path
):
    from marco_gguf import convert

    folder = checkpoint(spec)
    imatrix = None
    if with_imatrix:
        imatrix = compute_imatrix(
            converted(spec, "f32").path, text=text, outfile=tmp_path / "m.imatrix.gguf", ctx=CTX, chunks=2
        ).path
    whole = convert(folder, preset=preset, outfile=tmp_path / "whole.gguf", imatrix=imatrix, threads=2).path
    from_gguf = prune(whole, keep=6, usage=usage(spec), outfile=tmp_path / "a.gguf")
    from_ckpt = prune(
        folder, keep=6, usage=usage(spec), preset=preset, imatrix=imatrix, outfile=tmp_path / "b.gguf", threads=2
    )
    assert from_gguf.kept == from_ckpt.kept
    assert sha(from_gguf.path) == sha(from_ckpt.path)
    assert from_gguf.size_bytes < whole.stat().st_size


def test_sliced_imatrix_beside_a_pruned_gguf(converted, usage, text, tmp_path):
    full = compute_imatrix(
        converted(MODEL, "f32").path, text=text, outfile=tmp_path / "m.imatrix.gguf", ctx=CTX, chunks=2
    ).imatrix
    r = prune(
        converted(MODEL, "f32").path,
        keep=6,
        usage=usage(MODEL),
        imatrix=tmp_path / "m.imatrix.gguf",
        outfile=tmp_path / "p.gguf",
    )
    assert r.imatrix == tmp_path / "p.imatrix.gguf"
    sliced = read_imatrix(r.imatrix)
    assert sliced.entries.keys() == full.entries.keys()
    for layer in range(MODEL.layers):
        name = f"blk.{layer}.ffn_down_exps.weight"
        rows = r.kept[layer]
        assert sliced.entries[name].counts.tolist() == full.entries[name].counts[rows].tolist()
        np.testing.assert_array_equal(
            sliced.entries[name].sums.reshape(6, -1), full.entries[name].sums.astype(np.float32).reshape(16, -1)[rows]
        )
    q = "blk.0.attn_q.weight"
    np.testing.assert_array_equal(sliced.entries[q].sums, full.entries[q].sums.astype(np.float32))


HF_CASES = [  # (reason, spec, the config key that holds the expert count)
    ("per-expert tensors (save_pretrained), 5.x config", MODEL, "num_local_experts"),
    ("fused expert stacks, 4.x config", FUSED, "num_experts"),
]


@pytest.mark.slow
@pytest.mark.parametrize("reason,spec,key", HF_CASES, ids=[c[0] for c in HF_CASES])
def test_hf_format_is_the_pruned_model(reason, spec, key, checkpoint, usage, tmp_path):
    from transformers import Qwen3MoeForCausalLM

    r = prune(checkpoint(spec), keep=8, usage=usage(spec), format="hf", outfile=tmp_path / "small")
    config = json.loads((r.path / "config.json").read_text())
    assert config[key] == 8 and config["marco_prune"]["kept_experts"] == r.kept
    assert (r.path / "tokenizer.json").is_file() and (r.path / "model.safetensors").is_file()
    ours = Qwen3MoeForCausalLM.from_pretrained(r.path, dtype=torch.float32).state_dict()
    ref = pruned_reference(checkpoint(spec), r.kept).state_dict()
    assert ours.keys() == ref.keys()
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k
    assert [p.name for p in tmp_path.iterdir()] == ["small"]


def test_pruned_file_loads_and_exports_to_ollama(converted, usage, llama_tool, tmp_path):
    from marco_gguf.export import export_ollama
    from marco_gguf.llama.loader import load_model

    r = prune(converted(MODEL, "q8_0").path, keep=4, usage=usage(MODEL), outfile=tmp_path / "Marco-Pruned4-Q8_0.gguf")
    # `ollama create` (0.30+, copyLayerWithLlamaQuantize) checks every model GGUF by running this very command
    # (llama-quantize loads it with check_tensors) and stores the copy: it must pass and change no tensor
    copy = tmp_path / "ollama-blob.gguf"
    done = subprocess.run(
        [str(llama_tool("llama-quantize")), "--allow-requantize", str(r.path), str(copy), "COPY"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ours, blob = GGUFReader(r.path), GGUFReader(copy)
    assert sorted((t.name, t.tensor_type, bytes(t.data)) for t in ours.tensors) == sorted(
        (t.name, t.tensor_type, bytes(t.data)) for t in blob.tensors
    )
    assert blob.fields["qwen3moe.expert_count"].contents() == 4
    assert blob.fields["marco.prune.kept_experts"].contents() == ours.fields["marco.prune.kept_experts"].contents()
    llm = load_model(r.path)
    try:
        assert len(llm.tokenize(b"hello world")) > 0
        llm.eval(llm.tokenize(b"hello world"))
        # llama-cpp-python 0.3.x leaves Llama.scores unwritten without logits_all (uninitialised memory: zeros in
        # a fresh process, garbage later), so the last position's logits are read from the context itself
        import llama_cpp

        last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        assert np.isfinite(last).all() and last.std() > 0
    finally:
        llm.close()
    exported = export_ollama(r.path, name="marco-pruned")
    text = exported.modelfile.read_text()
    assert "FROM ./Marco-Pruned4-Q8_0.gguf" in text
    whole = export_ollama(converted(MODEL, "q8_0").path, outdir=tmp_path / "whole", name="marco")

    def body(modelfile: str) -> list[str]:  # all but the comments and the FROM line
        return [line for line in modelfile.splitlines() if not line.startswith(("#", "FROM"))]

    # the same template, stops and parameters as the unpruned model's: only the file differs
    assert body(text) == body(whole.modelfile.read_text()) and "TEMPLATE" in text


class FakeUsage:
    """A usage measurement with hand-made tables, to pin down the ranking rules."""

    def __init__(self, counts, reap):
        self.counts, self.reap = np.array(counts), np.array(reap, dtype=float)

    def combined(self):
        return self


CHOICE_CASES = [  # (reason, counts, reap, keep, method, expected)
    ("frequency keeps the most routed", [[5, 1, 9, 3]], [[1, 9, 1, 1]], 2, "frequency", [[0, 2]]),
    ("REAP keeps the most salient, however rarely routed", [[5, 1, 9, 3]], [[1, 9, 1, 2]], 2, "reap", [[1, 3]]),
    ("equal scores keep the lower index", [[2, 2, 2, 2]], [[0, 0, 0, 0]], 3, "frequency", [[0, 1, 2]]),
    ("each layer on its own", [[1, 0, 0], [0, 0, 1]], [[0, 0, 0], [0, 0, 0]], 1, "frequency", [[0], [2]]),
]


@pytest.mark.parametrize("reason,counts,reap,keep,method,expected", CHOICE_CASES, ids=[c[0] for c in CHOICE_CASES])
def test_choose_experts(reason, counts, reap, keep, method, expected):
    assert choose_experts(FakeUsage(counts, reap), keep, method) == expected


SPAN = "keep from 4 (the experts per token) to 15"  # MODEL: 16 experts, 4 per token; keeping all 16 prunes nothing
ERROR_CASES = [  # (reason, source spec, usage spec, kwargs, fragments)
    ("fewer experts than per token", MODEL, MODEL, dict(keep=3), ["--keep 3: out of range", "4 per token", SPAN]),
    (
        "--keep 0: the minimum named is the experts per token, not 1",
        MODEL,
        MODEL,
        dict(keep=0),
        ["--keep 0: out of range", "(16 experts, 4 per token)", SPAN],
    ),
    (
        "all experts kept is no pruning",
        MODEL,
        MODEL,
        dict(keep=16),
        ["keeps all 16 experts of", "prunes nothing", SPAN],
    ),
    ("more experts than the model has", MODEL, MODEL, dict(keep=17), ["--keep 17: out of range", "16 experts", SPAN]),
    ("an unknown method", MODEL, MODEL, dict(keep=8, method="random"), ["unknown method 'random'", "reap, frequency"]),
    ("usage from another model", MODEL, OTHER, dict(keep=8), ["measured on another model", "router weights differ"]),
    ("usage from a model with more layers", MODEL, DEEPER, dict(keep=8), ["with layers 3", "has 2"]),
    (
        "a preset for a GGUF",
        MODEL,
        MODEL,
        dict(keep=8, preset="q8_0"),
        ["without requantizing: --preset needs a checkpoint"],
    ),
    ("HF output from a GGUF", MODEL, MODEL, dict(keep=8, format="hf"), ["--format hf needs a checkpoint"]),
]


@pytest.mark.parametrize("reason,src,used,kwargs,fragments", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_prune_refuses(reason, src, used, kwargs, fragments, converted, usage, tmp_path):
    with pytest.raises(PruneError) as e:
        prune(converted(src, "f32").path, usage=usage(used), outfile=tmp_path / "out.gguf", **kwargs)
    for f in fragments:
        assert f in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_source_refusal_leaves_nothing(checkpoint, usage, tmp_path):
    with pytest.raises(PruneError, match="measured on another model"):
        prune(checkpoint(MODEL), keep=8, usage=usage(OTHER), outfile=tmp_path / "out.gguf")
    assert list(tmp_path.iterdir()) == []


def test_cli_json_and_error_line(converted, usage, tmp_path):
    args = ["prune", str(converted(MODEL, "q8_0").path), "--usage", str(usage(MODEL)), "-o", str(tmp_path / "p.gguf")]
    r = CliRunner().invoke(app, [*args, "--keep", "8", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["experts_after"] == 8 and doc["experts_before"] == 16 and doc["method"] == "reap"
    assert doc["size_bytes"] == (tmp_path / "p.gguf").stat().st_size
    r = CliRunner().invoke(app, [*args, "--keep", "2", "--force"])
    assert r.exit_code == 1 and "error:" in r.output and "--keep 2: out of range" in r.output


NEXT_STEPS = [  # (reason, source is a checkpoint, format, -o name, the commands printed to measure the cost)
    (
        "a GGUF: compared with the GGUF it was cut from",
        False,
        "gguf",
        "p.gguf",
        "marco-gguf quality {o}/p.gguf --ref {src} --text EVAL.txt",
    ),
    (
        "a checkpoint: the whole model converted alike, beside the pruned file",
        True,
        "gguf",
        "p.gguf",
        "marco-gguf convert {src} --preset q8_0 --outdir {o} && "
        "marco-gguf quality {o}/p.gguf --ref {o}/{name}-Q8_0.gguf --text EVAL.txt",
    ),
    (
        "a checkpoint written back: both converted alike",
        True,
        "hf",
        "small",
        "marco-gguf convert {o}/small --preset q8_0 --outdir {o} && marco-gguf convert {src} --preset q8_0 --outdir {o}"
        " && marco-gguf quality {o}/small-Q8_0.gguf --ref {o}/{name}-Q8_0.gguf --text EVAL.txt",
    ),
]


@pytest.mark.parametrize("reason,from_ckpt,fmt,name,expected", NEXT_STEPS, ids=[c[0] for c in NEXT_STEPS])
def test_closing_hint_names_this_runs_files(
    reason, from_ckpt, fmt, name, expected, checkpoint, converted, usage, tmp_path
):
    src = checkpoint(MODEL) if from_ckpt else converted(MODEL, "q8_0").path
    args = ["prune", str(src), "--keep", "8", "--usage", str(usage(MODEL)), "-o", str(tmp_path / name), "--format", fmt]
    r = CliRunner().invoke(app, args, terminal_width=40)
    assert r.exit_code == 0, r.output
    command = expected.format(o=tmp_path, src=src, name=src.resolve().name)
    assert r.stdout.splitlines()[-1] == command  # the last line, whole: copyable however narrow the terminal


def test_metadata_is_copied_by_our_reader_with_every_type(converted, usage, tmp_path, monkeypatch):
    """Reason: gguf-py's GGUFReader spent 13 of 16 s parsing a vocabulary; ours reads the same keys and types."""
    import gguf

    src = converted(MODEL, "q8_0").path
    before = GGUFReader(src).fields
    monkeypatch.setattr(gguf, "GGUFReader", None)  # prune must not need it
    r = prune(src, keep=8, usage=usage(MODEL), outfile=tmp_path / "p.gguf")
    monkeypatch.undo()
    after = GGUFReader(r.path).fields
    changed = {"qwen3moe.expert_count", "general.size_label"}
    assert {k for k in after if not k.startswith("marco.prune.")} == set(before)
    for k, f in before.items():
        if k.startswith("GGUF.") or k in changed:
            continue
        assert (after[k].types, after[k].contents()) == (f.types, f.contents()), k
    assert after["qwen3moe.expert_count"].contents() == 8


def test_one_identity_across_presets_and_the_checkpoint(checkpoint, converted):
    """A usage measured on any preset applies to every other preset and to the checkpoint; another model's does not."""
    from marco_gguf.experts.identity import gguf_identity
    from marco_gguf.experts.prune import _source_identity

    def same(i):
        return (i.architecture, i.layers, i.experts, i.experts_per_token, i.shapes_sha256, i.router_sha256)

    f32 = same(gguf_identity(converted(MODEL, "f32").path))
    assert same(gguf_identity(converted(MODEL, "q8_0").path)) == f32
    assert same(gguf_identity(converted(MODEL, "bf16").path)) == f32
    assert same(_source_identity(checkpoint(MODEL))) == f32
    assert same(gguf_identity(converted(OTHER, "f32").path))[-1] != f32[-1]
    bf16 = Spec()  # a BF16 checkpoint: its router widened to float32 is the GGUF's F32 router
    assert same(_source_identity(checkpoint(bf16))) == same(gguf_identity(converted(bf16, "q8_0").path))
