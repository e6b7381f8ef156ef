"""`inspect` and `verify`: figures recomputed independently from the config, damage detected."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from checkpoints import Spec

from marco_gguf.base.errors import GGUFFileError
from marco_gguf.gguf_io.info import read_info
from marco_gguf.gguf_io.reader import read_header
from marco_gguf.measure.bench import bytes_per_token as bench_bytes_per_token
from marco_gguf.measure.verify import verify

NANO_LIKE = Spec(layers=8, experts=16, expert_ff=384, shard_size="20MB")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "marco_gguf", *args], capture_output=True, text=True)


def test_inspect_figures_match_the_config(converted):
    s = Spec()
    info = read_info(converted(s, "q8_0").path)
    h, kv = s.hidden, s.kv_heads * s.head_dim
    attn = s.layers * (2 * h * s.heads * s.head_dim + 2 * h * kv)
    experts = s.layers * 3 * s.experts * s.expert_ff * h
    vocab = info.tensors[0].shape[0]
    norms = s.layers * (2 * h + 2 * s.head_dim) + h
    shared = attn + s.layers * s.experts * h + vocab * h + norms
    assert info.n_parameters == shared + experts
    assert info.active_parameters == shared + experts * s.top_k // s.experts
    assert info.group_totals()["experts"]["tensors"] == 3 * s.layers
    assert info.hparams["expert_used_count"] == s.top_k and info.has_chat_template
    # F16 KV cache: 2 (K,V) x layers x ctx x kv_dim x 2 bytes
    assert info.kv_cache_bytes(4096) == 2 * s.layers * 4096 * kv * 2
    q8 = 34 / 32  # Q8_0 bytes per weight
    # tied: the output matmul reads all of token_embd, the lookup one more row of it
    expected_bpt = (attn + vocab * h + h + experts * s.top_k / s.experts) * q8 + (s.layers * s.experts * h + norms) * 4
    assert abs(info.bytes_per_token - expected_bpt) < 1


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_inspect_and_bench_report_one_bytes_per_token(tied, converted):
    """Reason: the two once disagreed by an embedding row on tied models; a hand count pins the one formula."""
    s = Spec(tied=tied)
    info = read_info(converted(s, "f32").path)
    h, kv, vocab = s.hidden, s.kv_heads * s.head_dim, info.tensors[0].shape[0]
    per_layer = 2 * h * s.heads * s.head_dim + 2 * h * kv + s.experts * h + 2 * h + 2 * s.head_dim
    routed = 3 * s.top_k * s.expert_ff * h
    head = vocab * h + h  # the output matrix (token_embd itself when tied, output.weight otherwise) + one lookup row
    hand = 4 * (s.layers * (per_layer + routed) + h + head)
    assert info.bytes_per_token == bench_bytes_per_token(info) == hand


def test_inspect_json_cli(converted):
    proc = cli("inspect", str(converted(Spec(), "q4_k_m").path), "--json", "--ctx", "1024")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["architecture"] == "qwen3moe" and out["ctx"] == 1024
    assert set(out["groups"]) == {"embeddings", "attention", "router", "experts", "norms"}
    assert out["ram_needed"]["total"] > out["ram_needed"]["weights"] > 0
    assert out["tokenizer"]["tokens"] > 500 and out["tokenizer"]["add_bos_token"] is False


def test_fast_reader_agrees_with_gguf_py(converted):
    from gguf import GGUFReader

    path = converted(Spec(vocab="qwen3"), "q8_0").path
    ours, ref = read_header(path), GGUFReader(path)
    assert {k: v for k, v in ours.fields.items()} == {
        f.name: f.contents() for f in ref.fields.values() if not f.name.startswith("GGUF.")
    }
    assert [(t.name, t.type, t.offset, t.n_bytes) for t in ours.tensors] == [
        (t.name, t.tensor_type, t.data_offset, t.n_bytes) for t in ref.tensors
    ]


def damage(kind: str, src, dst) -> None:
    data = src.read_bytes()
    if kind == "not gguf":
        dst.write_bytes(b"PK\x03\x04" + data[4:])
    elif kind == "truncated data":
        dst.write_bytes(data[: len(data) - 4096])
    elif kind == "truncated header":
        dst.write_bytes(data[:5000])
    elif kind == "corrupt header":
        dst.write_bytes(data[:24] + b"\xff" * 16 + data[40:])


DAMAGE = [  # (reason, kind, message fragment)
    ("a zip file renamed .gguf", "not gguf", "not a GGUF file (starts with b'PK"),
    ("copy cut short in the tensor data", "truncated data", "truncated: tensor data ends at byte"),
    ("copy cut short in the metadata", "truncated header", "corrupt or truncated GGUF header"),
    ("garbage in the first key", "corrupt header", "corrupt or truncated GGUF header"),
]


@pytest.mark.parametrize("reason,kind,fragment", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_file_one_line_error(reason, kind, fragment, converted, tmp_path):
    bad = tmp_path / "bad.gguf"
    damage(kind, converted(Spec(), "q8_0").path, bad)
    with pytest.raises(GGUFFileError, match=r"bad.gguf"):
        read_info(bad)
    proc = cli("inspect", str(bad))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and fragment in proc.stderr
    assert "Traceback" not in proc.stderr


GOOD = [  # (reason, spec, preset)
    ("Q8_0 of a bf16 checkpoint", Spec(), "q8_0"),
    ("Q4_K_M with Q5_0/Q8_0 fallbacks (Nano-like)", NANO_LIKE, "q4_k_m"),
    ("BF16 is lossless from bf16", Spec(), "bf16"),
    ("F32 of fused experts", Spec(layout="fused"), "f32"),
]


@pytest.mark.parametrize("reason,spec,preset", GOOD, ids=[g[0] for g in GOOD])
def test_verify_accepts_faithful_conversions(reason, spec, preset, checkpoint, converted):
    result = verify(converted(spec, preset).path, source=checkpoint(spec))
    assert result.ok, result.as_dict()
    assert len(result.tensors) == len(read_header(converted(spec, preset).path).tensors)
    if preset in ("bf16", "f32"):
        assert max(t.rel_rms_error for t in result.tensors) == 0.0


def test_verify_flags_a_tampered_tensor(checkpoint, converted, tmp_path):
    path = tmp_path / "x.gguf"
    shutil.copy(converted(Spec(), "q8_0").path, path)
    target = next(t for t in read_header(path).tensors if t.name == "blk.1.ffn_up_exps.weight")
    with open(path, "r+b") as f:  # scramble one expert's rows
        f.seek(target.offset + target.n_bytes // 2)
        f.write(os.urandom(4096))
    result = verify(path, source=checkpoint(Spec()))
    assert not result.ok and [t.name for t in result.flagged] == ["blk.1.ffn_up_exps.weight"]
    proc = cli("verify", str(path), "--source", str(checkpoint(Spec())))
    assert proc.returncode == 1 and "blk.1.ffn_up_exps.weight (Q8_0): error" in proc.stdout


def test_verify_against_the_wrong_source(checkpoint, converted):
    result = verify(converted(Spec(), "q8_0").path, source=checkpoint(Spec(seed=3)), load=False)
    assert not result.ok and len(result.flagged) > 20  # every weight differs


def test_verify_reports_metadata_drift(checkpoint, converted, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(checkpoint(Spec()), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_parameters"]["rope_theta"] = 10000.0
    (src / "config.json").write_text(json.dumps(cfg))
    result = verify(converted(Spec(), "q8_0").path, source=src, load=False)
    assert result.metadata_mismatches == ("qwen3moe.rope.freq_base: file has 1000000.0, source implies 10000.0",)
    assert not result.flagged and not result.ok
