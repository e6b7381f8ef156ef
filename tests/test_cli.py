"""The installed `marco-gguf` program and the standalone script, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import Spec
from gguf import GGUFReader

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "marco_gguf"]


def run(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd)


def test_version_and_help():
    from marco_gguf import __version__

    assert run("--version").stdout.strip() == f"marco-gguf {__version__}"
    assert "convert" in run("--help").stdout


def test_convert_json_summary(checkpoint, tmp_path):
    proc = run("convert", str(checkpoint(Spec())), "--preset", "q8_0", "--outdir", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    path = tmp_path / "Marco-Test-Instruct-Q8_0.gguf"  # publisher convention: <folder>-<PRESET>.gguf
    assert summary["path"] == str(path) and summary["size_bytes"] == path.stat().st_size
    assert summary["n_tensors"] == len(GGUFReader(path).tensors) == 26
    assert {"bits_per_weight", "seconds", "preset", "tensor_types"} <= summary.keys()
    assert 8.0 < summary["bits_per_weight"] < 9.0


def test_convert_human_summary_and_name(checkpoint, tmp_path):
    proc = run("convert", str(checkpoint(Spec())), "--preset", "bf16", "--outdir", str(tmp_path), "--name", "My-Marco")
    assert proc.returncode == 0, proc.stderr
    assert "My-Marco-BF16.gguf" in proc.stdout and "bits/weight" in proc.stdout
    assert proc.stderr == ""  # no bar when stderr is not a terminal


def test_error_is_one_red_line_and_exit_1(tmp_path):
    proc = run("convert", str(tmp_path / "missing"))
    assert proc.returncode == 1
    assert proc.stdout == ""
    # a missing folder is "no such folder" (it said "not a folder", the cause of a file given as SOURCE)
    assert proc.stderr == (
        f"error: {tmp_path / 'missing'}: no such folder — SOURCE must be a Hugging Face checkpoint folder\n"
    )
    assert "Traceback" not in proc.stderr


def test_debug_env_shows_traceback(tmp_path):
    proc = run("convert", str(tmp_path / "missing"), env={"MARCO_GGUF_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


def test_standalone_script_matches_library(checkpoint, tmp_path):
    script = [sys.executable, str(ROOT / "convert" / "hf_to_gguf.py")]
    proc = subprocess.run(
        [*script, str(checkpoint(Spec())), "--preset", "f16", "--outfile", str(tmp_path / "x.gguf")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {tmp_path / 'x.gguf'}")
    assert GGUFReader(tmp_path / "x.gguf").fields["general.file_type"].contents() == 1


@pytest.mark.slow
def test_demo_runs_offline(tmp_path):
    proc = run("demo", "--json", env={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["completion_tokens"] >= 1 and out["completion_tokens_per_s"] > 0 and out["prompt_tokens"] > 10
    assert out["gguf"]["n_tensors"] == 26
    assert list(tmp_path.iterdir()) == []  # the demo cleans up after itself
