"""`bench`: llama-bench's tests, the bandwidth probe and the roofline's bytes per token."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from checkpoints import Spec
from gguf import GGML_QUANT_SIZES, GGUFReader

import marco_gguf.measure.bench as bench_module
from marco_gguf.gguf_io.info import read_info
from marco_gguf.measure.bench import BenchResult, _timed_parallel, bench, bytes_per_token, probe_bandwidth

CLI = [sys.executable, "-m", "marco_gguf"]

# (reason, spec, preset): tied and untied embeddings, uniform and mixed tensor types
MODELS = [
    ("tied embeddings, Q8_0 everywhere", Spec(), "q8_0"),
    ("tied embeddings, K-quant mix (Q6_K token_embd, Q4_K/Q6_K/Q5_0 experts)", Spec(), "q4_k_m"),
    ("separate output.weight", Spec(tied=False), "q8_0"),
]


def reference_bytes_per_token(path) -> float:
    """The issue's definition, computed independently with gguf-py's GGUFReader."""
    r = GGUFReader(path)
    used = int(r.fields["qwen3moe.expert_used_count"].contents())
    total = int(r.fields["qwen3moe.expert_count"].contents())
    size = {}
    for t in r.tensors:
        block, type_size = GGML_QUANT_SIZES[t.tensor_type]
        size[t.name] = int(np.prod(t.shape)) // block * type_size  # t.shape is ggml's ne order
        size[t.name, "row"] = int(t.shape[0]) // block * type_size
    out = 0.0
    for name in (n for n in size if isinstance(n, str)):
        if "_exps" in name:
            out += size[name] * used / total  # the routed experts' share
        elif name == "token_embd.weight":
            out += size[name, "row"]  # the lookup reads one row ...
            out += size[name] * ("output.weight" not in size)  # ... and, tied, the whole matrix as output
        else:
            out += size[name]  # attention, router, norms, output
    return out


@pytest.mark.parametrize("reason,spec,preset", MODELS, ids=[m[0] for m in MODELS])
def test_bytes_per_token_matches_gguf_py(reason, spec, preset, converted):
    path = converted(spec, preset).path
    assert abs(bytes_per_token(read_info(path)) - reference_bytes_per_token(path)) <= 1


def test_bench_rows_follow_llama_bench(converted):
    result = bench(converted(Spec(), "q8_0").path, n_prompt=32, n_gen=8, threads=(1, 2), reps=2)
    assert [(r.test, r.threads) for r in result] == [("pp32", 1), ("tg8", 1), ("pp32", 2), ("tg8", 2)]
    for r in result:
        assert len(r.samples) == 2 and r.tokens_per_s > 0 and r.spread >= 0 and r.bandwidth_gbps > 0
        assert (r.roofline_tokens_per_s is None) == r.test.startswith("pp")  # a roofline only for generation
    tg = result.rows[1]
    assert tg.roofline_tokens_per_s == pytest.approx(tg.bandwidth_gbps * 1e9 / result.bytes_per_token)
    assert tg.roofline_fraction == pytest.approx(tg.tokens_per_s / tg.roofline_tokens_per_s)


# (reason, prompt evaluated untimed first, tokens timed): llama-bench's test_gen with and without --n-depth
GENERATION = [
    ("from an empty cache, as bench runs it", 0, 8),
    ("after a prompt longer than one batch (evaluated n_batch at a time)", 40, 5),
]


@pytest.mark.parametrize("reason,depth,n", GENERATION, ids=[g[0] for g in GENERATION])
def test_time_generation_runs_after_its_depth(reason, depth, n, converted):
    """The timed tokens land right after the untimed ones: the cache ends at depth + n positions."""
    import llama_cpp as lib

    from marco_gguf.llama.engine import Engine

    engine = Engine(converted(Spec(), "q8_0").path, ctx=64, parallel=1, threads=1, batch=16)
    with engine, engine.exclusive() as direct:
        assert bench_module.time_generation(direct, [5] * n, after=[7] * depth) > 0
        assert lib.llama_memory_seq_pos_max(lib.llama_get_memory(direct.ctx), 0) == depth + n - 1


def test_bandwidth_probe_reports_every_run_of_copy_and_add():
    gbps = probe_bandwidth(threads=2, mib=16, reps=3)
    assert set(gbps) == {"copy", "add"} and all(len(v) == 3 and all(0.1 < x < 10_000 for x in v) for v in gbps.values())


def test_parallel_timing_runs_every_slice_on_its_own_pinned_thread():
    """Each run covers the slowest slice (spans are the workers' own stamps), every slice runs once per
    repetition plus the warm-up, and each worker is pinned to a CPU of its own."""
    seen, naps = [], {0: 0.005, 1: 0.03}

    def kernel(s: slice) -> None:
        seen.append((s.start, threading.get_ident(), frozenset(os.sched_getaffinity(0))))
        time.sleep(naps[s.start])

    seconds = _timed_parallel(kernel, [slice(0, 1), slice(1, 2)], reps=3)
    assert len(seconds) == 3 and all(t >= 0.03 for t in seconds)
    assert sorted(start for start, _, _ in seen) == [0] * 4 + [1] * 4
    threads_of = {start: {ident for s, ident, _ in seen if s == start} for start in (0, 1)}
    assert all(len(ids) == 1 for ids in threads_of.values()) and threads_of[0] != threads_of[1]
    if len(os.sched_getaffinity(0)) >= 2:
        cpus = {start: {cpu for s, _, cpu in seen if s == start} for start in (0, 1)}
        assert all(len(c) == 1 and len(next(iter(c))) == 1 for c in cpus.values()) and cpus[0] != cpus[1]


def test_parallel_timing_reports_a_failing_kernel_instead_of_hanging():
    """One worker's error must release the other from the barrier and reach the caller."""

    def kernel(s: slice) -> None:
        if s.start == 1:
            raise MemoryError("slice 1 failed")

    with pytest.raises(MemoryError, match="slice 1 failed"):
        _timed_parallel(kernel, [slice(0, 1), slice(1, 2)], reps=2)


def test_bench_roofline_takes_the_best_run_of_both_probes(converted, monkeypatch):
    """A shared host's bandwidth moves between probes: every run of the probes before and after the tests is
    kept (each run's better kernel), the roofline takes the best, the spread is reported with it."""
    probes = iter([{"copy": [10.0, 11.0], "add": [12.0, 9.0]}, {"copy": [30.0, 8.0], "add": [5.0, 10.0]}])
    monkeypatch.setattr(bench_module, "probe_bandwidth", lambda **kw: next(probes))
    result = bench(converted(Spec(), "q8_0").path, n_prompt=8, n_gen=4, threads=1, reps=1)
    assert result.bandwidth_runs == {1: (12.0, 11.0, 30.0, 10.0)}
    assert result.bandwidth_gbps == {1: 30.0} and all(r.bandwidth_gbps == 30.0 for r in result)
    spread = {"best": 30.0, "median": 11.5, "lowest": 10.0, "runs": 4, "uncertainty": 30.0 / 11.5 - 1}
    assert result.bandwidth_spread(1) == spread and result.as_dict()["bandwidth_spread"] == {1: spread}


SPREADS = [  # (reason, probe runs in GB/s, the line bench prints)
    (
        "a quiet machine: the runs agree",
        (50.0, 49.0, 50.0, 48.0),
        "  2 thread(s): best 50.0 GB/s of 4 runs (median 49.5, lowest 48.0); the roofline uses the best: at the "
        'median, "of roofline" would be 1% higher',
    ),
    (
        "a busy machine (issue 26: 34 to 55 GB/s): the uncertainty is said",
        (55.0, 34.0, 40.0, 45.0),
        "  2 thread(s): best 55.0 GB/s of 4 runs (median 42.5, lowest 34.0); the roofline uses the best: at the "
        'median, "of roofline" would be 29% higher',
    ),
]


@pytest.mark.parametrize("reason,runs,line", SPREADS, ids=[s[0] for s in SPREADS])
def test_cli_shows_the_probe_spread(reason, runs, line, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from marco_gguf.cli import bench as cli_bench
    from marco_gguf.cli.app import app

    result = BenchResult(tmp_path / "m.gguf", 1, 8.5, 1000, {2: max(runs)}, (), {2: runs})
    monkeypatch.setattr(cli_bench, "lib_bench", lambda *a, **k: result)
    (tmp_path / "m.gguf").write_bytes(b"")
    r = CliRunner().invoke(app, ["bench", str(tmp_path / "m.gguf"), "-t", "2"], terminal_width=60)
    assert r.exit_code == 0, r.output
    assert line in r.stdout.splitlines()


def test_bench_json_cli(converted):
    proc = subprocess.run(
        [
            *CLI,
            "bench",
            str(converted(Spec(), "q8_0").path),
            "-p",
            "16",
            "-n",
            "4",
            "--threads",
            "1",
            "--reps",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["test"], r["threads"]) for r in rows] == [("pp16", 1), ("tg4", 1)]
    assert all(r["tokens_per_s"] > 0 for r in rows) and rows[1]["roofline_fraction"] > 0


def test_bench_table_cli(converted):
    proc = subprocess.run(
        [*CLI, "bench", str(converted(Spec(), "q8_0").path), "-p", "16", "-n", "4", "--threads", "1", "--reps", "2"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    for text in (
        "Marco-Test-Instruct-Q8_0.gguf",
        "bits/weight",
        "pp16",
        "tg4",
        " ± ",
        "  1 thread(s): best ",
        "bytes read per generated token",
    ):
        assert text in proc.stdout
    # one number format for a speed and its spread, as llama-bench's (it printed `104 ± 2.29`)
    pairs = re.findall(r"([\d,.]+) ± ([\d,.]+)", proc.stdout)
    assert len(pairs) == 2 and all(re.fullmatch(r"[\d,]+\.\d\d", x) for pair in pairs for x in pair), pairs
    assert re.search(r"\d\.\d\d MiB", proc.stdout)  # the size in MiB/GiB, as llama.cpp's tools print it


BAD = [
    ("not a GGUF", lambda d: [str((d / "x.gguf").write_text("no") and d / "x.gguf")], 1, "error: ", "not a GGUF file"),
    ("thread list with a word", lambda d: ["m.gguf", "--threads", "1,two"], 2, "", "not a comma-separated list"),
    ("nothing to run", lambda d: ["m.gguf", "-p", "0", "-n", "0"], 2, "", "-p and -n cannot both be 0"),
]


@pytest.mark.parametrize("reason,args,code,prefix,message", BAD, ids=[b[0] for b in BAD])
def test_bench_refusals(reason, args, code, prefix, message, tmp_path):
    proc = subprocess.run([*CLI, "bench", *args(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == code and proc.stderr.startswith(prefix) and message in proc.stderr
    assert "Traceback" not in proc.stderr
