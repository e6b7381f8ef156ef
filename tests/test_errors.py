"""Bad input gets a clear, specific error and leaves no .gguf (or temp file) behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from checkpoints import Spec

from marco_gguf import convert
from marco_gguf.base.errors import (
    CheckpointError,
    OutputError,
    PresetError,
    TensorError,
    TokenizerError,
    UnsupportedModelError,
)

SHARDED = Spec()  # 7 bf16 shards + index
SINGLE = Spec(shard_size=None)  # one model.safetensors


def edit_config(**changes):
    def mutate(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(changes)
        (folder / "config.json").write_text(json.dumps(cfg))

    return mutate


def shard(folder: Path, n: int) -> Path:
    return sorted(folder.glob("model-*.safetensors"))[n]


def truncate_last_shard(folder: Path) -> None:
    last = shard(folder, -1)
    data = last.read_bytes()
    last.write_bytes(data[: len(data) - 1000])


def corrupt_header(folder: Path) -> None:
    f = shard(folder, 0)
    data = bytearray(f.read_bytes())
    data[8:20] = b"#not json!!#"
    f.write_bytes(bytes(data))


def rewrite_single(folder: Path, drop: str | None = None, add: str | None = None) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    if drop:
        del state[drop]
    if add:
        state[add] = state["model.layers.0.mlp.gate.weight"].clone()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


CASES = [  # (reason, spec, mutation, error type, fragments the message must contain)
    (
        "not a Qwen3-MoE architecture",
        SHARDED,
        edit_config(architectures=["LlamaForCausalLM"]),
        UnsupportedModelError,
        ["config.json", "LlamaForCausalLM", "is not Qwen3MoeForCausalLM"],
    ),
    (
        "router weights not renormalised: llama.cpp cannot represent it",
        SHARDED,
        edit_config(norm_topk_prob=False),
        UnsupportedModelError,
        ["norm_topk_prob is false"],
    ),
    (
        "dense layers among MoE layers",
        SHARDED,
        edit_config(mlp_only_layers=[1]),
        UnsupportedModelError,
        ["mlp_only_layers=[1]", "every layer must be MoE"],
    ),
    (
        "MoE only every second layer",
        SHARDED,
        edit_config(decoder_sparse_step=2),
        UnsupportedModelError,
        ["decoder_sparse_step=2"],
    ),
    (
        "RoPE scaling Marco does not use",
        SHARDED,
        edit_config(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}),
        UnsupportedModelError,
        ["rope type 'yarn'"],
    ),
    (
        "a shard listed in the index is missing",
        SHARDED,
        lambda f: shard(f, 1).unlink(),
        CheckpointError,
        ["model-00002-of-00007.safetensors", "missing shard", "tensors listed in"],
    ),
    (
        "a shard was cut short by an interrupted download",
        SHARDED,
        truncate_last_shard,
        CheckpointError,
        ["model-00007-of-00007.safetensors", "truncated", "ends at byte", "but the file has"],
    ),
    (
        "a shard's header is not JSON",
        SHARDED,
        corrupt_header,
        CheckpointError,
        ["model-00001-of-00007.safetensors", "corrupt safetensors header"],
    ),
    (
        "expert size disagrees with the weights",
        SHARDED,
        edit_config(moe_intermediate_size=128),
        TensorError,
        ["has shape [256, 256]", "config.json implies [128, 256]", "moe_intermediate_size=128"],
    ),
    (
        "a tensor is missing",
        SINGLE,
        lambda f: rewrite_single(f, drop="model.layers.1.mlp.gate.weight"),
        TensorError,
        ["missing tensor model.layers.1.mlp.gate.weight", "expected shape [16, 256]"],
    ),
    (
        "a tensor qwen3moe has no place for",
        SINGLE,
        lambda f: rewrite_single(f, add="model.layers.0.mlp.shared_expert_gate.weight"),
        TensorError,
        ["unknown tensor model.layers.0.mlp.shared_expert_gate.weight"],
    ),
    (
        "no tokenizer.json",
        SHARDED,
        lambda f: (f / "tokenizer.json").unlink(),
        TokenizerError,
        ["tokenizer.json: missing tokenizer file"],
    ),
    (
        "no tokenizer_config.json",
        SHARDED,
        lambda f: (f / "tokenizer_config.json").unlink(),
        TokenizerError,
        ["tokenizer_config.json: missing tokenizer file"],
    ),
    ("no config.json", SHARDED, lambda f: (f / "config.json").unlink(), CheckpointError, ["config.json: not found"]),
    (
        "no weights at all",
        SHARDED,
        lambda f: [p.unlink() for p in f.glob("model*")],
        CheckpointError,
        ["no model.safetensors or model.safetensors.index.json"],
    ),
]


@pytest.mark.parametrize("reason,spec,mutate,error,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_checkpoint_refused(reason, spec, mutate, error, fragments, checkpoint, tmp_path):
    folder = tmp_path / "Marco-Bad"
    shutil.copytree(checkpoint(spec), folder)
    mutate(folder)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(error) as info:
        convert(folder, preset="q8_0", outdir=out)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert list(out.iterdir()) == []


def test_existing_output_kept_without_force(checkpoint, tmp_path):
    target = tmp_path / "Marco-Test-Instruct-Q8_0.gguf"
    target.write_bytes(b"precious")
    with pytest.raises(OutputError, match=r"already exists.*--force"):
        convert(checkpoint(SHARDED), outdir=tmp_path)
    assert target.read_bytes() == b"precious"
    assert convert(checkpoint(SHARDED), outdir=tmp_path, force=True).size_bytes > 1000


OUTPUT_FOLDERS = [
    ("-o into folders that do not exist yet", dict(outfile="models/new/x.gguf"), "models/new/x.gguf"),
    ("--outdir that does not exist yet", dict(outdir="models"), "models/Marco-Test-Instruct-Q8_0.gguf"),
]


@pytest.mark.parametrize("reason,where,made", OUTPUT_FOLDERS, ids=[c[0] for c in OUTPUT_FOLDERS])
def test_missing_output_folders_are_created(reason, where, made, checkpoint, tmp_path):
    """Reason: as mlx_lm.convert and `hf download --local-dir` do, a new folder is made rather than refused."""
    r = convert(checkpoint(SHARDED), **{k: tmp_path / v for k, v in where.items()})
    assert r.path == tmp_path / made and r.path.is_file()


def test_failed_conversion_removes_the_folders_it_made(checkpoint, tmp_path, monkeypatch):
    import marco_gguf.gguf_io.writer as writer

    monkeypatch.setattr(writer.GGUFStreamWriter, "commit", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        convert(checkpoint(SHARDED), outfile=tmp_path / "models" / "new" / "x.gguf")
    assert list(tmp_path.iterdir()) == []


def test_output_folder_that_is_a_file(checkpoint, tmp_path):
    (tmp_path / "models").write_text("not a folder")
    with pytest.raises(OutputError, match="models: is a file, not a folder"):
        convert(checkpoint(SHARDED), outdir=tmp_path / "models")


def test_not_enough_disk_space_refused_before_writing(checkpoint, tmp_path, monkeypatch):
    import marco_gguf.gguf_io.writer as writer

    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OutputError, match=r"not enough disk space \([\d,]+ bytes needed, 1,000 free\)"):
        convert(checkpoint(SHARDED), outdir=tmp_path)
    assert list(tmp_path.iterdir()) == []


class FillingDisk:
    """A file whose disk fills up after `room` bytes, as a real full disk answers write()."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if n > self.room:
            import errno

            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= n
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_disk_full_while_writing_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    import marco_gguf.gguf_io.writer as writer

    real_fdopen = writer.os.fdopen
    monkeypatch.setattr(writer.os, "fdopen", lambda fd, *a, **k: FillingDisk(real_fdopen(fd, *a, **k), 300_000))
    with pytest.raises(OutputError, match=r"disk full \([\d,]+ bytes needed"):
        convert(checkpoint(SHARDED), outdir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_leaves_nothing(checkpoint, tmp_path):
    def interrupt(e):
        if e.done > e.total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(checkpoint(SHARDED), outdir=tmp_path, progress=interrupt)
    assert list(tmp_path.iterdir()) == []


PRESET_CASES = [  # (reason, preset argument, file content or None, message fragments)
    (
        "unknown shipped preset",
        "q3_x",
        None,
        [
            "unknown preset 'q3_x'",
            "accepted: bf16, f16, f32, iq2_m, iq2_xs, iq3_m, iq3_xxs, iq4_nl, iq4_xs, q2_k, q3_k_l, q3_k_m, q3_k_s, q4_k_m, q4_k_s, q5_k_m, q6_k, q8_0",
        ],
    ),
    ("preset file missing", "missing.toml", None, ["missing.toml: preset file not found"]),
    ("invalid TOML", "bad.toml", "name = ", ["bad.toml: invalid TOML"]),
    (
        "unknown default type",
        "bad.toml",
        'name="X"\nfile_type="MOSTLY_Q8_0"\ndefault_type="Q9_9"',
        ["default_type: unknown or unsupported type 'Q9_9'", "accepted:", "Q4_K"],
    ),
    (
        "unknown field",
        "bad.toml",
        'name="X"\nfile_type="MOSTLY_Q8_0"\ndefault_type="Q8_0"\ncolour="red"',
        ["unknown field(s) ['colour']"],
    ),
    (
        "rule naming a tensor qwen3moe lacks",
        "bad.toml",
        'name="X"\nfile_type="MOSTLY_Q8_0"\ndefault_type="Q8_0"\n[[rules]]\ntensors=["ffn_down_shexp"]\ntype="Q6_K"',
        ["rules[0].tensors", "must list qwen3moe tensor names"],
    ),
    (
        "bad layer selection",
        "bad.toml",
        'name="X"\nfile_type="MOSTLY_Q8_0"\ndefault_type="Q8_0"\n[[rules]]\ntensors=["attn_v"]\ntype="Q6_K"\nlayers="odd"',
        ["rules[0].layers: 'odd' is not a layer selection", "more_bits"],
    ),
]


@pytest.mark.parametrize("reason,name,content,fragments", PRESET_CASES, ids=[c[0] for c in PRESET_CASES])
def test_bad_preset_refused(reason, name, content, fragments, checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(PresetError) as info:
        convert(checkpoint(SHARDED), preset=name, outdir=tmp_path / "out")
    for fragment in fragments:
        assert fragment in str(info.value)


def test_bad_tensor_type_override(checkpoint, tmp_path):
    with pytest.raises(PresetError, match=r"--tensor-type 'ffn_down': expected PATTERN=TYPE"):
        convert(checkpoint(SHARDED), outdir=tmp_path, tensor_types=["ffn_down"])
