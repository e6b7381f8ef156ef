#!/usr/bin/env python3
"""Interleaved multi-turn chats on a few slots: time to first token, `marco-gguf serve` vs llama.cpp's llama-server.

Issue 26, item 1: a request used to go to the slot with the longest common prefix even when that prefix was
a few tokens of the chat template's header, so two conversations took turns evicting each other while an
idle slot stood empty, and every turn re-evaluated the whole conversation. Now a slot is reused only when it
holds more than --slot-prompt-similarity (0.5) of the prompt, as llama-server does.

For each slot count N (--slots, default 2 and 4), each workload and each server, one server at a time in
this one run, alternating their order from one repeat to the next: N conversations, each with a system
prompt of ~--system words, `--turns` turns each, sent ONE REQUEST AT A TIME in cycles (every conversation
once per cycle, in a seeded order that changes from cycle to cycle: the issue's "A, B, A, B" and its
shuffles). Each request streams a greedy reply of --reply tokens; the client appends the reply it received
to its conversation. Measured on the client: time to first token (TTFT: request sent -> first chunk with
text); from the server's own `timings` (both servers report llama-server's `cache_n` and `prompt_n`): the
share of the prompt that came from the KV cache. The first turn of a conversation has nothing cached
anywhere; follow-up turns (2..) are where slot choice matters, and their medians are the result.

Workloads: `distinct`: each conversation its own system prompt (sharing only the template's header, the
issue's case); `shared`: one long system prompt for all, each conversation then its own first question (a
multi-user app), where a prefix-only rule sends every conversation to the slot of the last one.

Servers: `marco-gguf` (this tree, `serve --parallel N`); `llama-server` (llama.cpp's own, built from the
source vendored by the installed llama-cpp-python by tests/reftools.py, `-np N --kv-unified`, the KV layout
marco-gguf's engine uses, `--reasoning-format none` so both return the same text, otherwise its defaults:
`--slot-prompt-similarity` 0.1 and its 8 GiB host-memory prompt cache); with `--before REV`, also
`marco-gguf REV` (that commit's marco_gguf package, e.g. the code before the fix). Same file, context,
threads and requests for all.

    python benchmarks/serve_slots.py --workdir /tmp/marco-slots --before main --results benchmarks/serve_slots.json
    python benchmarks/serve_slots.py --results benchmarks/serve_slots.json --report
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from runtime_overhead import build_model  # this folder's: the model runtime_overhead.py measures

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # reftools: llama.cpp's tools, built once per machine

TOPICS = ["sailing ships", "tax law", "baking bread", "chess openings", "volcanoes", "rivers", "clocks", "gardens"]


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
    "sailing",
    "harbour",
    "river",
    "mountain",
    "clock",
    "bread",
    "chess",
    "volcano",
    "winter",
    "garden",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def conversations(workload: str, n: int, system_words: int, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    shared = f"You are a helpful assistant for a team. {words(rng, system_words)}."
    chats = []
    for i in range(n):
        if workload == "shared":
            first = f"I am user {i}, asking about {TOPICS[i % len(TOPICS)]}. {words(rng, 20)}?"
            chats.append([{"role": "system", "content": shared}, {"role": "user", "content": first}])
        else:
            system = f"You are an expert on {TOPICS[i % len(TOPICS)]}. {words(rng, system_words)}."
            chats.append([{"role": "system", "content": system}, {"role": "user", "content": f"{words(rng, 20)}?"}])
    return chats


def command(side: str, model: Path, port: int, slots: int, args: argparse.Namespace) -> list[str]:
    if side == "llama-server":
        import reftools

        return [
            str(reftools.tool("llama-server")),
            *("-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", str(args.ctx)),
            *("-t", str(args.threads), "-tb", str(args.threads), "-np", str(slots), "--kv-unified"),
            *("--reasoning-format", "none", "--no-webui", *reftools.weight_buffers()),
        ]
    serve = [sys.executable, "-m", "marco_gguf", "serve", str(model), "--port", str(port), "--ctx", str(args.ctx)]
    return [*serve, "--threads", str(args.threads), "--parallel", str(slots)]


def tree(side: str, trees: dict) -> Path:
    """Where a marco-gguf side runs from: `python -m` puts the working folder first on sys.path."""
    return trees.get(side, HERE.parent)


def stream(port: int, messages: list[dict], tokens: int) -> dict:
    """One streaming chat request: TTFT, the reply's text, the server's cache_n and prompt_n."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = {"model": "m", "messages": messages, "max_tokens": tokens, "temperature": 0, "seed": 1, "stream": True}
    sent = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    first, text, timings = None, [], dict[str, int]()
    for line in r:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        event = json.loads(line[6:])
        delta = ((event.get("choices") or [{}])[0].get("delta")) or {}
        if delta.get("content"):
            first = first or time.perf_counter()
            text.append(delta["content"])
        timings = event.get("timings") or timings
    conn.close()
    if first is None or "cache_n" not in timings:
        raise RuntimeError(f"no text or no timings in the stream: {timings}")
    return {
        "ttft_s": first - sent,
        "text": "".join(text),
        "cache_n": timings["cache_n"],
        "prompt_n": timings["prompt_n"],
    }


def run_workload(port: int, kind: str, slots: int, args: argparse.Namespace) -> list[dict]:
    """Every request of one workload, one at a time, in cycles over the conversations."""
    chats = conversations(kind, slots, args.system, seed=slots)
    order = random.Random(slots)
    rows = []
    for turn in range(1, args.turns + 1):
        cycle = list(range(slots))
        if turn > 1:
            order.shuffle(cycle)
        for c in cycle:
            if turn > 1:
                chats[c].append({"role": "user", "content": f"And then, question {turn}: {words(order, 12)}?"})
            out = stream(port, chats[c], args.reply)
            chats[c].append({"role": "assistant", "content": out.pop("text")})
            rows.append({"conversation": c, "turn": turn, **out})
            print(f"  {kind} turn {turn} conversation {c}: {out}", file=sys.stderr, flush=True)
    return rows


def wait_ready(proc: subprocess.Popen, port: int, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not become ready")


def run_side(side: str, model: Path, slots: int, args: argparse.Namespace, trees: dict) -> dict:
    port = free_port()
    proc = subprocess.Popen(
        command(side, model, port, slots, args),
        cwd=tree(side, trees),
        env={**os.environ, "PYTHONPATH": str(tree(side, trees))},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(proc, port)
        stream(port, [{"role": "user", "content": "Warm up."}], 4)  # its first decode, then a fresh slot state
        return {w: run_workload(port, w, slots, args) for w in args.workloads}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def checkout(rev: str, into: Path) -> Path:
    """That commit's marco_gguf package, unpacked under `into` (for PYTHONPATH)."""
    archive = subprocess.run(["git", "archive", rev, "marco_gguf"], cwd=HERE.parent, capture_output=True, check=True)
    tar = into / "tree.tar"
    tar.write_bytes(archive.stdout)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return into


def machine() -> str:
    from runtime_overhead import machine as described  # this folder is on sys.path when run as a script

    return f"{described()}; load average (1 min) at start {os.getloadavg()[0]:.1f}"


def summary(rows: list[dict]) -> dict:
    follow = [r for r in rows if r["turn"] > 1]
    share = [r["cache_n"] / (r["cache_n"] + r["prompt_n"]) for r in follow]
    return {
        "requests": len(rows),
        "ttft_first_turn_s": statistics.median(r["ttft_s"] for r in rows if r["turn"] == 1),
        "ttft_follow_up_s": statistics.median(r["ttft_s"] for r in follow),
        "cached_follow_up": statistics.median(share),
        "prompt_follow_up": statistics.median(r["cache_n"] + r["prompt_n"] for r in follow),
    }


def report(data: dict) -> str:
    lines = [f"Machine: {data['machine']}. Settings: {data['settings']}.", ""]
    sides = data["sides"]
    lines += [
        "| slots | workload | server | requests | prompt tokens (median, turns 2+) | cached share (median, turns 2+) "
        "| TTFT turn 1 (s) | TTFT turns 2+ (s) | TTFT turns 2+ / llama-server |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for slots in sorted({run["slots"] for run in data["runs"]}):  # those measured so far
        for w in data["workloads"]:
            rows = {s: [r for rep in data["runs"] if rep["slots"] == slots for r in rep[s][w]] for s in sides}
            ref = summary(rows["llama-server"])["ttft_follow_up_s"]
            for s in sides:
                m = summary(rows[s])
                lines.append(
                    f"| {slots} | {w} | {s} | {m['requests']} | {m['prompt_follow_up']:.0f} | {m['cached_follow_up']:.0%} "
                    f"| {m['ttft_first_turn_s']:.3f} | {m['ttft_follow_up_s']:.3f} | {m['ttft_follow_up_s'] / ref:.2f}x |"
                )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/marco-slots"), help="where the model is built")
    p.add_argument("--model", type=Path, help="a GGUF to use instead of building the 4-layer Nano")
    p.add_argument("--slots", default="2,4")
    p.add_argument("--workloads", default="distinct,shared")
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--system", type=int, default=300, help="words in each system prompt")
    p.add_argument("--reply", type=int, default=16, help="max_tokens of each reply")
    p.add_argument("--repeats", type=int, default=3, help="each server this many times per slot count")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx", type=int, default=8192)
    p.add_argument("--before", metavar="REV", help="also run marco-gguf as of this commit (e.g. main)")
    p.add_argument("--results", type=Path, default=Path("benchmarks/serve_slots.json"))
    p.add_argument("--report", action="store_true", help="only print the Markdown table of --results")
    args = p.parse_args()
    if args.report:
        print(report(json.loads(args.results.read_text())))
        return
    args.slots = [int(n) for n in args.slots.split(",")]
    args.workloads = args.workloads.split(",")
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = (args.model or build_model(args.workdir)).resolve()
    sides = ["marco-gguf", "llama-server"]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        if args.before:
            rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=HERE.parent, capture_output=True)
            sides.insert(1, f"marco-gguf {args.before} ({rev.stdout.decode().strip()})")
            trees[sides[1]] = checkout(args.before, Path(tmp))
        data = {
            "machine": machine(),
            "model": model.name,
            "settings": f"{model.name} ({model.stat().st_size / 2**30:.2f} GiB), {args.turns} turns per conversation, "
            f"system prompts of ~{args.system} words, replies of {args.reply} tokens (greedy), one request at a "
            f"time, --ctx {args.ctx}, {args.threads} threads, {args.repeats} repeats per server and slot count",
            "slots": args.slots,
            "workloads": args.workloads,
            "sides": sides,
            "runs": [],
        }
        for rep in range(args.repeats):
            for slots in args.slots:
                run: dict = {"slots": slots, "repeat": rep}
                for side in sides if rep % 2 == 0 else sides[::-1]:
                    run[side] = run_side(side, model, slots, args, trees)
                    print(f"repeat {rep}, {slots} slots, {side}: done", file=sys.stderr)
                data["runs"].append(run)
                args.results.write_text(json.dumps(data, indent=2) + "\n")  # kept if a later run fails
    print(report(data))


if __name__ == "__main__":
    main()
