#!/usr/bin/env python3
"""Serving throughput and latency: `marco-gguf serve` vs llama-cpp-python's own `llama_cpp.server`.

The same GGUF, threads and context for both, one server at a time in this one run. For K = 1, 2, 4,
8 concurrent clients, each client sends `--rounds` streaming chat requests one after another
(distinct prompts of about 100 tokens, greedy, `max_tokens` = `--tokens`) over plain HTTP
(http.client, SSE parsed by hand). Measured on the client side, identically for both servers:

- aggregate generation tokens/s = content chunks received by all clients / wall time of the phase
  (from the first request sent to the last stream ended; prompts included, as a user sees it);
- time to first token (TTFT) = request sent -> first chunk with text, median and p95 (nearest rank);
- per-stream decode rate = (chunks - 1) / (last chunk - first chunk), median.

llama_cpp.server runs with `--interrupt_requests False` (its default cuts off a running stream when
a new request arrives) and serializes requests; on a CPU with AMX it loads the weights in plain CPU
buffers as marco-gguf does there (llama.cpp's AMX kernels crash it otherwise); marco-gguf with `--parallel 4` (its default). A
reference for one stream: `marco_gguf.measure.bench.bench` tg (the `marco-gguf bench` loop) on the same file,
after the file was read once into the page cache (it must fit in RAM beside the server).

    pip install 'llama-cpp-python[server]'      # the other side (fastapi, sse-starlette, ...)
    python benchmarks/serve.py Marco-Nano-Synth-Q4_K_M.gguf --results benchmarks/serve.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

WORDS = [
    "mixture",
    "experts",
    "router",
    "token",
    "layer",
    "cache",
    "slot",
    "batch",
    "context",
    "memory",
    "bandwidth",
    "thread",
    "quantization",
    "vocabulary",
    "attention",
    "gradient",
]


RUN_LLAMA_CPP_SERVER = """
import contextlib, runpy, sys
from marco_gguf.llama.loader import without_extra_buffers
from marco_gguf.llama.loader import amx_kernels_built
with without_extra_buffers() if amx_kernels_built() else contextlib.nullcontext():
    sys.argv = ["llama_cpp.server", *sys.argv[1:]]
    runpy.run_module("llama_cpp.server", run_name="__main__")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(kind: str, model: Path, port: int, args: argparse.Namespace) -> list[str]:
    if kind == "marco-gguf":
        return [
            sys.executable,
            "-m",
            "marco_gguf",
            "serve",
            str(model),
            "--port",
            str(port),
            "--ctx",
            str(args.ctx),
            "--threads",
            str(args.threads),
            "--parallel",
            str(args.parallel),
        ]
    server = [
        "--model",
        str(model),
        "--port",
        str(port),
        "--n_ctx",
        str(args.ctx),
        "--n_threads",
        str(args.threads),
        "--n_threads_batch",
        str(args.threads),
        "--interrupt_requests",
        "False",
    ]
    # On a CPU with AMX, llama.cpp's AMX kernels crash (README, Running): llama_cpp.server segfaults on its
    # first prompt. Load it as marco-gguf's loader loads weights there, in plain CPU buffers.
    return [sys.executable, "-c", RUN_LLAMA_CPP_SERVER, *server]


def prompt(i: int) -> str:
    rng = __import__("random").Random(i)
    return f"Request {i}. " + " ".join(rng.choice(WORDS) for _ in range(80)) + ". Explain."


def stream(port: int, i: int, tokens: int) -> dict:
    """One streaming chat request: send time, chunk times."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": prompt(i)}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    sent = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
    times = []
    for line in r:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        choices = json.loads(line[6:]).get("choices") or [{}]
        if (choices[0].get("delta") or {}).get("content"):
            times.append(time.perf_counter())
    conn.close()
    return {"sent": sent, "times": times}


def phase(port: int, clients: int, rounds: int, tokens: int, base: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(rounds):
            out = stream(port, base + c * rounds + r, tokens)
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = max(r["times"][-1] for r in results if r["times"])
    ttft = sorted(r["times"][0] - r["sent"] for r in results if r["times"])
    rates = [(len(r["times"]) - 1) / (r["times"][-1] - r["times"][0]) for r in results if len(r["times"]) > 1]
    n = sum(len(r["times"]) for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": n,
        "seconds": end - start,
        "aggregate_tokens_per_s": n / (end - start),
        "ttft_median_s": statistics.median(ttft),
        "ttft_p95_s": ttft[min(len(ttft) - 1, int(0.95 * len(ttft) + 0.999) - 1)],
        "stream_tokens_per_s_median": statistics.median(rates),
    }


def wait_ready(proc: subprocess.Popen, port: int, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            stream(port, -1, 4)  # also the warm-up
            return
        except (OSError, RuntimeError):
            time.sleep(0.5)
    raise RuntimeError("the server did not become ready")


def run_server(kind: str, model: Path, args: argparse.Namespace, save) -> dict:
    import psutil

    port = free_port()
    proc = subprocess.Popen(commands(kind, model, port, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    phases: list[dict] = []
    try:
        wait_ready(proc, port)
        for k in args.streams:  # saved after each phase: a slow run on a busy machine keeps what it measured
            phases.append(phase(port, k, args.rounds, args.tokens, 1000 * k))
            save(kind, phases)
        rss = psutil.Process(proc.pid).memory_info().rss
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"server": kind, "phases": phases, "rss_bytes": rss}


def read_through(path: Path) -> None:
    """Read the whole file once so that it sits in the page cache: bench (whose warm-up is one token) and the
    first server would otherwise pay for reading the experts from disk as tokens first route to them."""
    with path.open("rb", buffering=0) as f:
        while f.read(1 << 24):
            pass


def machine() -> str:
    from runtime_overhead import machine as described  # this folder is on sys.path when run as a script

    return f"{described()}; load average (1 min) at start {os.getloadavg()[0]:.1f}"


def report(data: dict) -> str:
    lines = [f"Machine: {data['machine']}. Settings: {data['settings']}.", ""]
    for m in data["models"]:
        ours, theirs = (next(s for s in m["servers"] if s["server"] == k) for k in ("marco-gguf", "llama_cpp.server"))
        lines += [
            f"**{m['model']}** ({m['size_gib']:.2f} GiB; `marco-gguf bench` tg{data['tokens']} at "
            f"{data['threads']} threads: {m['bench_tg']:.1f} tokens/s; server RSS after the run: marco-gguf "
            f"{ours['rss_bytes'] / 2**30:.2f} GiB, llama_cpp.server {theirs['rss_bytes'] / 2**30:.2f} GiB)",
            "",
            "| streams | aggregate t/s: marco-gguf | llama_cpp.server | ratio | TTFT median / p95 (s): marco-gguf "
            "| llama_cpp.server | per-stream t/s (median): marco-gguf | llama_cpp.server |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for a, b in zip(ours["phases"], theirs["phases"]):
            lines.append(
                f"| {a['clients']} | {a['aggregate_tokens_per_s']:.1f} | {b['aggregate_tokens_per_s']:.1f} | "
                f"{a['aggregate_tokens_per_s'] / b['aggregate_tokens_per_s']:.2f}x | "
                f"{a['ttft_median_s']:.2f} / {a['ttft_p95_s']:.2f} | {b['ttft_median_s']:.2f} / "
                f"{b['ttft_p95_s']:.2f} | {a['stream_tokens_per_s_median']:.1f} | "
                f"{b['stream_tokens_per_s_median']:.1f} |"
            )
        one = ours["phases"][0]["stream_tokens_per_s_median"]
        lines += [
            "",
            f"One stream: marco-gguf's per-stream decode rate is {one / m['bench_tg']:.0%} of "
            f"`marco-gguf bench` tg on the same file.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", type=Path)
    p.add_argument("--streams", default="1,2,4,8")
    p.add_argument("--rounds", type=int, default=3, help="requests per client, one after another")
    p.add_argument("--tokens", type=int, default=64, help="max_tokens of each request")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--results", type=Path, default=Path("benchmarks/serve.json"))
    p.add_argument("--report", action="store_true", help="only print the Markdown table of --results")
    args = p.parse_args()
    args.streams = [int(k) for k in args.streams.split(",")]
    if args.report:
        print(report(json.loads(args.results.read_text())))
        return
    from marco_gguf.measure.bench import bench

    data = {
        "machine": machine(),
        "tokens": args.tokens,
        "threads": args.threads,
        "settings": f"{args.rounds} requests per client, max_tokens {args.tokens}, prompts of ~100 tokens, greedy, "
        f"--ctx {args.ctx}, {args.threads} threads, marco-gguf --parallel {args.parallel}",
        "models": [],
    }
    for model in args.models:
        read_through(model)
        tg = next(
            r
            for r in bench(model, n_prompt=0, n_gen=args.tokens, threads=(args.threads,), reps=5).rows
            if r.test.startswith("tg")
        )
        entry = {
            "model": model.name,
            "size_gib": model.stat().st_size / 2**30,
            "bench_tg": tg.tokens_per_s,
            "servers": [],
        }
        data["models"].append(entry)

        def save(kind: str, phases: list[dict], entry: dict = entry) -> None:
            partial = [s for s in entry["servers"] if s["server"] != kind] + [{"server": kind, "phases": phases}]
            args.results.write_text(
                json.dumps({**data, "models": [*data["models"][:-1], {**entry, "servers": partial}]}, indent=2) + "\n"
            )

        for kind in ("marco-gguf", "llama_cpp.server"):
            entry["servers"].append(run_server(kind, model, args, save))
            args.results.write_text(json.dumps(data, indent=2) + "\n")
    print(report(data))


if __name__ == "__main__":
    main()
