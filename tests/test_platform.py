"""What the code does where Linux's extras are missing (macOS, Windows), simulated here: no os.preadv, no CPU
affinity, no /proc or /sys read by our own code. CI runs Linux only; these pin the fallbacks it cannot run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import psutil
import pytest
from checkpoints import Spec

from marco_gguf import convert
from marco_gguf.base import machine
from marco_gguf.hf.checkpoint import Checkpoint

PACKAGE = Path(__file__).resolve().parents[1] / "marco_gguf"


def test_no_linux_only_files_in_our_code():
    """Reason: /proc and /sys exist only on Linux; psutil reads them there and asks the OS elsewhere."""
    offenders = [
        f"{p.relative_to(PACKAGE)}:{i}"
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.parent.name != "calibration"
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"[\"'](/proc|/sys)/", line)
    ]
    assert not offenders, offenders


def test_checkpoint_reads_without_preadv(checkpoint, monkeypatch):
    """Reason: Windows has no os.preadv; each reader thread seeks its own handle instead, same bytes."""
    folder = checkpoint(Spec())
    with Checkpoint(folder) as ckpt:
        names = sorted(ckpt.tensors)[:5]
        positional = {n: ckpt.read_rows(n, 1, 2).tobytes() for n in names}
    monkeypatch.delattr(os, "preadv")
    with Checkpoint(folder) as ckpt:
        assert {n: ckpt.read_rows(n, 1, 2).tobytes() for n in names} == positional


def test_conversion_is_byte_identical_without_preadv(checkpoint, tmp_path, monkeypatch):
    """Reason: the thread pool's readers share no file position in the fallback (a shared one would mix rows)."""
    folder = checkpoint(Spec())
    expected = convert(folder, preset="q8_0", outdir=tmp_path / "a", threads=2).path.read_bytes()
    monkeypatch.delattr(os, "preadv")
    assert convert(folder, preset="q8_0", outdir=tmp_path / "b", threads=4).path.read_bytes() == expected


@pytest.mark.parametrize(
    "reason, affinity, physical, expected_cpus, expected_cores",
    [
        ("Linux: affinity caps the cores", lambda self: [0, 1], 4, [0, 1], 2),
        ("macOS: no affinity, every CPU is usable", None, 1, None, 1),
        ("psutil cannot count physical cores: the usable CPUs", lambda self: [0, 1, 2], None, [0, 1, 2], 3),
    ],
)
def test_machine_facts_without_affinity(reason, affinity, physical, expected_cpus, expected_cores, monkeypatch):
    if affinity is None:
        monkeypatch.delattr(psutil.Process, "cpu_affinity", raising=False)
    else:
        monkeypatch.setattr(psutil.Process, "cpu_affinity", affinity)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: physical if not logical else os.cpu_count())
    cpus = machine.usable_cpus()
    assert cpus == (expected_cpus if expected_cpus is not None else list(range(os.cpu_count() or 1))), reason
    assert machine.physical_cores() == min(expected_cores, len(cpus)), reason


def test_available_memory_comes_from_psutil(monkeypatch):
    """Reason: the RAM check before loading a model works wherever psutil does."""
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("vm", (), {"available": 123 << 20})())
    assert machine.available_memory() == 123 << 20
