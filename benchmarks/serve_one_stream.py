#!/usr/bin/env python3
"""One stream of `serve` against `bench` tg, paired on the same loaded weights.

benchmarks/serve.py compares servers, each in its own process with its own model load; on this VM the
same file decodes anywhere from 23 to 41 tokens/s from one load to the next, so a 3 % bound between a
server and a separate `bench` run cannot be checked there. Here one Engine (the object `serve` runs,
ctx 4096, 4 slots) is loaded once and each round times, back to back on it:

- tg: `bench`'s generation loop (marco_gguf.measure.bench.time_generation: one llama_decode per random token,
  no sampling) on the engine's context, lent out with Engine.exclusive as `bench` lends it, from an
  empty KV cache as `bench` runs it;
- tg_at_depth: the same loop after a prompt as long as the replies' (~100 tokens, evaluated untimed:
  llama-bench's --n-depth), since a reply is generated after its prompt, deeper into the cache;
- engine: one greedy request submitted to the engine directly (sampling, detokenizing, stop handling;
  no HTTP), rate = (predicted_n - 1) / predicted_ms from its timings (first to last token);
- http: one streaming /v1/chat/completions request to the same engine served by `create_app` under
  uvicorn on 127.0.0.1 (what `serve` runs), from a client in another process (http.client, SSE parsed
  by hand), rate = (content chunks - 1) / (last chunk - first chunk) as the client sees it.

The four run in a random order within each round; ratios are taken within each round and the median over
rounds is reported with a 95 % bootstrap interval and the range, so a slow minute of the VM hits both
sides of a ratio alike.

    python benchmarks/serve_one_stream.py Marco-Nano-Synth-Q4_K_M.gguf --rounds 15 --threads 2
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from runtime_overhead import machine  # this folder is on sys.path when run as a script
from serve import prompt, read_through  # the same ~100-token prompts as the server benchmark

CLIENT = r"""
import http.client, json, sys, time
port, tokens, text = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
body = {"messages": [{"role": "user", "content": text}], "max_tokens": tokens, "temperature": 0, "stream": True}
conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
times = []
for line in conn.getresponse():
    if line.startswith(b"data: {") and (json.loads(line[6:]).get("choices") or [{}])[0].get("delta", {}).get("content"):
        times.append(time.perf_counter())
print(json.dumps({"chunks": len(times), "seconds": times[-1] - times[0]}))
"""


def start_server(engine) -> tuple[object, int]:
    import uvicorn

    from marco_gguf.server import ServerState, create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(ServerState("m", engine=engine)), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, sock.getsockname()[1]


def one_round(engine, port: int, tokens: int, rng: random.Random, k: int) -> dict:
    """The four measurements of one round, in a random order (the VM drifts within a round too)."""
    from marco_gguf.llama.engine import Sampling
    from marco_gguf.measure.bench import time_generation

    def tg(after: list[int]) -> float:
        with engine.exclusive() as direct:
            random_tokens = [rng.randrange(direct.n_vocab) for _ in range(tokens)]
            return tokens / time_generation(direct, random_tokens, after=after)

    def own() -> float:
        job = engine.submit(engine.tokenize(prompt(10_000 + k)), max_tokens=tokens, sampling=Sampling(temperature=0))
        t = job.wait().timings
        return (t.predicted_n - 1) / t.predicted_ms * 1000

    def http() -> float:
        out = subprocess.run(
            [sys.executable, "-c", CLIENT, str(port), str(tokens), prompt(20_000 + k)],
            capture_output=True,
            text=True,
            check=True,
        )
        seen = json.loads(out.stdout)
        return (seen["chunks"] - 1) / seen["seconds"]

    # tg from an empty cache as `bench` runs it, and at the depth where the replies run (after a prompt)
    depth = engine.tokenize(prompt(30_000 + k))
    paths = {"tg": lambda: tg([]), "tg_at_depth": lambda: tg(depth), "engine": own, "http": http}
    order = rng.sample(list(paths), len(paths))
    return {**{name: paths[name]() for name in order}, "order": order, "depth": len(depth)}


def interval(values: list[float], draws: int = 2000) -> tuple[float, float]:
    """95 % bootstrap interval of the median (seeded: the report is reproducible from the JSON)."""
    rng = random.Random(1)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def summary(rounds: list[dict]) -> dict:
    """Medians of each path, and of each round's ratios to both tg references (older runs have no tg_at_depth)."""
    paths = [k for k in ("tg", "tg_at_depth", "engine", "http") if k in rounds[0]]
    out: dict = {f"{k}_tokens_per_s_median": statistics.median(r[k] for r in rounds) for k in paths}
    for k in ("engine", "http"):
        for ref in (p for p in paths if p.startswith("tg")):
            ratios = sorted(r[k] / r[ref] for r in rounds)
            low, high = interval(ratios)
            out[f"{k}_over_{ref}"] = {
                "median": statistics.median(ratios),
                "ci95": [low, high],
                "range": [ratios[0], ratios[-1]],
            }
    return out


def report(runs: list[dict]) -> str:
    lines = [
        "| threads | rounds | tg t/s (at depth) | engine t/s | http t/s | engine / tg | http / tg "
        "| engine / tg at depth | http / tg at depth |",
        "|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for run in runs:
        s = summary(run["rounds"])

        def ratio(key: str, s: dict = s) -> str:
            if key not in s:
                return "(not measured)"
            r = s[key]
            return f"{r['median']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}; {r['range'][0]:.2f}-{r['range'][1]:.2f})"

        deep = s.get("tg_at_depth_tokens_per_s_median")
        lines.append(
            f"| {run['threads']} | {len(run['rounds'])} | {s['tg_tokens_per_s_median']:.1f}"
            f"{f' ({deep:.1f})' if deep else ''} | {s['engine_tokens_per_s_median']:.1f} | "
            f"{s['http_tokens_per_s_median']:.1f} | {ratio('engine_over_tg')} | {ratio('http_over_tg')} | "
            f"{ratio('engine_over_tg_at_depth')} | {ratio('http_over_tg_at_depth')} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path, default=Path("benchmarks/serve_one_stream.json"))
    p.add_argument("--report", action="store_true", help="only print the Markdown table of --results")
    args = p.parse_args()
    if args.report:
        print(report(json.loads(args.results.read_text())))
        return
    from marco_gguf.llama.engine import Engine

    read_through(args.model)
    engine = Engine(args.model, ctx=4096, parallel=4, threads=args.threads)
    server, port = start_server(engine)
    rng, rounds = random.Random(0), []
    try:
        one_round(engine, port, args.tokens, rng, -1)  # warm-up: every path once
        for k in range(args.rounds):
            rounds.append(one_round(engine, port, args.tokens, rng, k))
            r = rounds[-1]
            print(f"round {k + 1}: " + "  ".join(f"{p} {r[p]:.1f}" for p in r["order"]) + " tokens/s", flush=True)
    finally:
        server.should_exit = True
        engine.close()
    result = {
        "machine": machine(),
        "model": args.model.name,
        "threads": args.threads,
        "tokens": args.tokens,
        "rounds": rounds,
        **summary(rounds),
    }
    previous = json.loads(args.results.read_text()) if args.results.exists() else []
    args.results.write_text(json.dumps([*previous, result], indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))


if __name__ == "__main__":
    main()
