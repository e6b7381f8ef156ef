#!/usr/bin/env python3
"""What marco-gguf's Python layer costs during generation: chat and bench vs raw llama_decode loops.

One process, one GGUF, the same threads and context for every side. Two measurements:

1. End to end, side by side, alternating so that both sides see the same load:
   - chat vs raw decode+sample. chat: ChatSession.send(prompt) iterated to its end (chat template,
     tokenizing, the one-slot Engine on its thread: KV-cache prefix reuse, one-token batches,
     llama.cpp's C sampler, detokenizing, the hand-over of each piece, bookkeeping), timed whole.
     raw: a second context in the same state (the prompt minus its last token cached), then for
     every decode chat made, llama_decode(ctx, llama_batch_get_one([t], 1)) + llama_sampler_sample
     with the same chain. The sides alternate whole replies (the engine decodes ahead of its reader,
     so they cannot alternate token by token).
   - bench tg vs raw decode: marco_gguf.measure.bench.time_generation on the engine's context (the loop
     behind `marco-gguf bench`'s tg rows, through Engine.exclusive) and the same llama_decode +
     llama_synchronize loop written inline on a plain llama_cpp.Llama, alternating 8-token calls from
     an empty KV cache as llama-bench's test_gen does.
2. The Python layer alone, free of that noise: the same loops with the C calls that do the model's
   work (llama_decode, llama_synchronize, llama_sampler_sample) replaced by Python stubs, timed over
   2,000 tokens; plus what send() costs per turn (template, tokenizing, prefix match). Its cost as a
   share of a real token = (chat's extra microseconds per token + send() / reply length) / the
   measured time per token.

tokens/s = decode steps / seconds. The model is a RANDOM-WEIGHT checkpoint with Marco-Nano's widths
and 4 layers converted to Q8_0 (built into --workdir when missing, about a minute): a token takes
well over 5 ms. Results go to --results (benchmarks/runtime_overhead.md).

    python benchmarks/runtime_overhead.py --workdir /tmp/marco-overhead
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

PROMPT = "Explain, step by step, how a mixture-of-experts layer routes each token to its experts."
STUB_TOKENS = 2000


def build_model(workdir: Path) -> Path:
    from marco_gguf import convert, synthesize

    out = workdir / "Marco-Nano-4L-Random-Q8_0.gguf"
    if not out.exists():
        ckpt = synthesize(workdir / "Marco-Nano-4L-Random", shape="nano", layers=4, vocab="auto", seed=0)
        convert(ckpt.path, preset="q8_0", outfile=out, force=True)
    return out


def machine() -> str:
    import llama_cpp

    from marco_gguf.base.machine import physical_cores

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    field = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lscpu.splitlines())}
    ram = next(
        int(line.split()[1]) / 2**20
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return (
        f"{field.get('Model name', '?')} (lscpu), {physical_cores()} physical cores ({os.cpu_count()} logical), "
        f"{ram:.0f} GiB RAM; Linux {platform.release()}, Python {platform.python_version()}, "
        f"llama-cpp-python {llama_cpp.__version__}"
    )


def raw_decode(ctx, tokens: list[int]) -> None:
    """The reference for bench: llama_decode + llama_synchronize per token, as llama-bench's test_gen."""
    import llama_cpp as lib

    one = (lib.llama_token * 1)()
    decode, get_one, sync = lib.llama_decode, lib.llama_batch_get_one, lib.llama_synchronize
    for t in tokens:
        one[0] = t
        decode(ctx, get_one(one, 1))
        sync(ctx)


def raw_decode_sample(ctx, first: int, n: int, sampler) -> None:
    """The reference for chat: llama_decode of one token + llama_sampler_sample, n times."""
    import llama_cpp as lib

    one = (lib.llama_token * 1)()
    decode, get_one, sample = lib.llama_decode, lib.llama_batch_get_one, lib.llama_sampler_sample
    one[0] = first
    for _ in range(n):
        decode(ctx, get_one(one, 1))
        one[0] = sample(sampler, ctx, -1)


def chat_vs_raw(session, raw, sampler, chat_first: bool) -> tuple[int, float, float]:
    """One chat turn, whole, and the same C work done raw, one after the other: (steps, chat s, raw s).

    The engine runs on its own thread and decodes the next token while the reader takes the last one, so
    the two sides cannot alternate token by token as they did before chat ran on the engine: they alternate
    whole replies, and `chat_first` swaps who goes first."""
    import llama_cpp as lib

    def chat():
        session.reset()
        started = time.perf_counter()
        reply = session.send(PROMPT).wait()
        return reply, time.perf_counter() - started

    def raw_side(prompt: list[int], steps: int) -> float:
        lib.llama_memory_clear(lib.llama_get_memory(raw.ctx), True)  # the state chat starts from: all but the
        arr = (lib.llama_token * len(prompt))(*prompt)  # last prompt token cached (the previous turn's)
        assert lib.llama_decode(raw.ctx, lib.llama_batch_get_one(arr, len(prompt) - 1)) == 0
        lib.llama_sampler_reset(sampler)
        started = time.perf_counter()
        raw_decode_sample(raw.ctx, prompt[-1], steps, sampler)
        return time.perf_counter() - started

    if chat_first:
        reply, chat_s = chat()
    prompt = session.prompt_tokens([{"role": "user", "content": PROMPT}])
    expected = session.max_tokens  # the turn's decodes: the last prompt token, then every token fed back
    raw_s = raw_side(prompt, expected)
    if not chat_first:
        reply, chat_s = chat()
    steps = reply.stats.prompt_tokens + reply.stats.completion_tokens - (reply.stats.stop_reason != "stop")
    assert reply.stats.prompt_tokens == 1 and steps == expected, (reply.stats, "a random model ended its turn early")
    return steps, chat_s, raw_s


def bench_vs_raw(direct, llm, tokens: list[int], chunk: int = 8) -> tuple[float, float]:
    """time_generation on the engine's context (`direct`) and the same loop inline on a plain llama_cpp.Llama,
    alternating `chunk`-token calls: (bench seconds, raw seconds)."""
    import llama_cpp as lib

    from marco_gguf.measure.bench import time_generation

    def raw(part: list[int]) -> float:
        lib.llama_memory_clear(lib.llama_get_memory(llm.ctx), False)
        started = time.perf_counter()
        raw_decode(llm.ctx, part)
        return time.perf_counter() - started

    runners, seconds = {"bench": lambda part: time_generation(direct, part), "raw": raw}, {"bench": 0.0, "raw": 0.0}
    for n, i in enumerate(range(0, len(tokens), chunk)):
        for name in ("bench", "raw") if n % 2 else ("raw", "bench"):  # alternate who goes first
            seconds[name] += runners[name](tokens[i : i + chunk])
    return seconds["bench"], seconds["raw"]


def prompt_vs_raw(direct, llm, tokens: list[int], bench_first: bool) -> tuple[float, float]:
    """time_prompt (bench's pp loop) on the engine's context and on a plain llama_cpp.Llama's, one after the
    other: (bench seconds, raw seconds). The contexts differ in their flash-attention setting (the engine
    leaves llama.cpp's automatic choice, llama_cpp.Llama turns it off) and in the engine's unified KV cache."""
    from marco_gguf.llama.engine import Direct
    from marco_gguf.measure.bench import time_prompt

    plain = Direct(llm.ctx, llm.n_batch, llm.n_vocab())
    if bench_first:
        ours = time_prompt(direct, tokens)
        return ours, time_prompt(plain, tokens)
    theirs = time_prompt(plain, tokens)
    return time_prompt(direct, tokens), theirs


@contextlib.contextmanager
def c_work_stubbed():
    """llama_decode, llama_synchronize and llama_sampler_sample do nothing: only the Python around them runs."""
    import llama_cpp as lib

    saved = lib.llama_decode, lib.llama_synchronize, lib.llama_sampler_sample
    counter = iter(range(10**9))
    lib.llama_decode, lib.llama_synchronize = (lambda ctx, batch: 0), (lambda ctx: None)
    lib.llama_sampler_sample = lambda smpl, ctx, idx: 1000 + next(counter) % 50_000  # never an end-of-turn token
    try:
        yield
    finally:
        lib.llama_decode, lib.llama_synchronize, lib.llama_sampler_sample = saved


def python_layer(model: Path, ctx: int) -> dict[str, float]:
    """Microseconds of Python per token (chat, bench, raw loops, C work stubbed) and per send()."""
    from marco_gguf.llama.engine import Direct
    from marco_gguf.llama.loader import load_model
    from marco_gguf.llama.session import ChatSession
    from marco_gguf.measure.bench import time_generation

    out: dict[str, list[float]] = {
        "chat": [],
        "raw decode+sample": [],
        "bench tg": [],
        "raw decode": [],
        "send": [],
        "send, 20 turns of history": [],
    }
    with ChatSession(model, ctx=ctx, threads=1, sampling={"seed": 0}, max_tokens=STUB_TOKENS) as s:
        raw = load_model(model, n_ctx=ctx, threads=1)
        with c_work_stubbed():
            for _ in range(5):
                s.reset()
                started = time.perf_counter()
                reply = s.send(PROMPT)
                out["send"].append(time.perf_counter() - started)
                started = time.perf_counter()
                reply.wait()
                out["chat"].append((time.perf_counter() - started) / len(reply.tokens))
                tokens = list(range(1000, 1000 + STUB_TOKENS))
                started = time.perf_counter()
                raw_decode_sample(raw.ctx, 1000, STUB_TOKENS, None)  # the stub ignores the sampler
                out["raw decode+sample"].append((time.perf_counter() - started) / STUB_TOKENS)
                started = time.perf_counter()
                raw_decode(raw.ctx, tokens)
                out["raw decode"].append((time.perf_counter() - started) / STUB_TOKENS)
                direct = Direct(raw.ctx, raw.n_batch, raw.n_vocab())
                out["bench tg"].append(time_generation(direct, tokens) / STUB_TOKENS)
            history = [{"role": r, "content": f"{PROMPT} ({i})"} for i in range(20) for r in ("user", "assistant")]
            for _ in range(5):
                s.reset()
                s.messages = list(history)
                started = time.perf_counter()
                s.send(PROMPT)
                out["send, 20 turns of history"].append(time.perf_counter() - started)
                s.reset()
        raw.close()
    return {k: statistics.median(v) * 1e6 for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/marco-overhead"))
    ap.add_argument("--model", type=Path, help="use this GGUF instead of building the Nano-4-layer Q8_0")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=64, help="reply length (chat's --max-tokens)")
    ap.add_argument("--threads", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2])
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--results", type=Path, default=Path(__file__).with_name("runtime_overhead.md"))
    args = ap.parse_args()

    import llama_cpp as lib

    from marco_gguf.gguf_io.info import read_info
    from marco_gguf.llama.engine import Engine
    from marco_gguf.llama.loader import amx_kernels_built, load_model
    from marco_gguf.llama.sampler import sampler_chain
    from marco_gguf.llama.session import ChatSession
    from marco_gguf.measure.bench import bytes_per_token

    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.model or build_model(args.workdir)
    load_before, results = os.getloadavg(), {}
    for threads in args.threads:
        session = ChatSession(
            model, ctx=args.ctx, threads=threads, sampling={"seed": args.seed}, max_tokens=args.tokens
        )
        engine = Engine(model, ctx=args.ctx, parallel=1, threads=threads)  # what bench() times on
        raw = load_model(model, n_ctx=args.ctx, threads=threads)
        sampler = sampler_chain(
            raw.n_vocab(), temp=0.7, top_p=0.8, top_k=20, min_p=0.0, repeat_penalty=1.0, seed=args.seed
        )  # chat's default chain, a copy of its own
        session.send(PROMPT).wait()  # warm-up; from here on the prompt is cached but for its last token
        chat_vs_raw(session, raw, sampler, True)  # warm-up of both contexts
        tokens = [(i * 7919) % raw.n_vocab() for i in range(args.tokens)]
        rows = []
        with engine.exclusive() as direct:
            bench_vs_raw(direct, raw, tokens[:8])
            pp_tokens = [(i * 7919) % raw.n_vocab() for i in range(512)]
            prompt_vs_raw(direct, raw, pp_tokens, True)
            for rep in range(args.reps):
                steps, chat_s, raw_s = chat_vs_raw(session, raw, sampler, rep % 2 == 0)
                bench_s, gen_s = bench_vs_raw(direct, raw, tokens)
                pp_s, raw_pp_s = prompt_vs_raw(direct, raw, pp_tokens, rep % 2 == 0)
                rows.append(((steps, chat_s, raw_s), (len(tokens), bench_s, gen_s), (len(pp_tokens), pp_s, raw_pp_s)))
                print(
                    f"{threads} thread(s), rep {rep + 1}/{args.reps}: chat {steps / chat_s:.2f} vs raw "
                    f"{steps / raw_s:.2f} tok/s; bench tg {len(tokens) / bench_s:.2f} vs raw "
                    f"{len(tokens) / gen_s:.2f} tok/s",
                    flush=True,
                )
        results[threads] = rows
        lib.llama_sampler_free(sampler)
        engine.close()
        raw.close()
        session.close()
    load_after = os.getloadavg()
    py = python_layer(model, args.ctx)

    info = read_info(model)
    lines = [
        "# Runtime overhead: marco-gguf chat/bench vs raw llama_decode",
        "",
        f"Written by `python benchmarks/runtime_overhead.py --reps {args.reps} --tokens {args.tokens}` on "
        f"{time.strftime('%Y-%m-%d')}; its docstring says exactly what each side runs.",
        "",
        f"- machine: {machine()}",
        f"- model: `{model.name}` (random weights, Marco-Nano widths, {info.hparams.get('block_count')} layers), "
        f"{info.file_size / 2**30:.2f} GiB, {info.bits_per_weight:.2f} bits/weight, "
        f"{bytes_per_token(info) / 2**20:.0f} MiB of weights read per generated token",
        f"- llama.cpp: {'built with its AMX kernels, so weights stay in plain CPU buffers (marco_gguf.llama.loader)' if amx_kernels_built() else 'default weight buffers'}",
        f"- settings: --ctx {args.ctx}, chat's default sampling (temp 0.7, top-k 20, top-p 0.8), seed {args.seed}, "
        f"{args.tokens}-token replies",
        f"- load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, after "
        f"{'/'.join(f'{x:.2f}' for x in load_after)} (the benchmark itself adds about one)",
        "",
        "## End to end, side by side",
        "",
        f"Side by side: chat and raw alternate whole {args.tokens}-token replies (who goes first alternates too), "
        f"bench and raw alternate 8-token calls (tg) and whole 512-token prompts (pp512); medians of {args.reps} repetitions; ratio = marco-gguf / raw "
        "from the summed times of all repetitions. chat runs on the engine (a one-slot `Engine` on its own "
        "thread), bench times llama_decode on the engine's context (`Engine.exclusive`), raw on a plain "
        "llama_cpp.Llama.",
        "",
        "| threads | comparison | marco-gguf tok/s | raw tok/s | ratio | ratio of each repetition |",
        "|---:|---|---:|---:|---:|---|",
    ]
    step_ms = {}
    for threads, rows in results.items():
        for i, name in enumerate(("chat vs raw decode+sample", "bench tg vs raw decode", "bench pp512 vs raw prompt")):
            runs = [r[i] for r in rows]  # (steps, marco-gguf seconds, raw seconds)
            lines.append(
                f"| {threads} | {name} | {statistics.median(r[0] / r[1] for r in runs):.2f} | "
                f"{statistics.median(r[0] / r[2] for r in runs):.2f} | "
                f"{sum(r[2] for r in runs) / sum(r[1] for r in runs):.3f} | "
                f"{', '.join(f'{r[2] / r[1]:.3f}' for r in runs)} |"
            )
        step_ms[threads] = statistics.median(r[0][2] / r[0][0] for r in rows) * 1000
    extra = py["chat"] - py["raw decode+sample"] + py["send"] / args.tokens
    lines += [
        "",
        "The bench rows run the same Python loop on two contexts (the engine's and llama_cpp.Llama's): what they "
        "measure is the contexts' settings, and their spread is this machine's noise. Hence the second measurement.",
        "",
        "## The Python layer alone",
        "",
        f"Microseconds of Python per token with the model's C work stubbed out (median of 5 runs of "
        f"{STUB_TOKENS:,} tokens):",
        "",
        "| loop | µs per token |",
        "|---|---:|",
        *(f"| {k} | {py[k]:.2f} |" for k in ("chat", "raw decode+sample", "bench tg", "raw decode")),
        "",
        f"send() per turn (template, tokenizing, prefix match): {py['send']:.0f} µs for one message, "
        f"{py['send, 20 turns of history']:.0f} µs with 20 turns of history.",
        "",
        "| threads | real time per token (raw decode+sample) | chat's extra Python per token | Python layer cost |",
        "|---:|---:|---:|---:|",
        *(f"| {t} | {ms:.2f} ms | {extra:.1f} µs | {extra / (ms * 1000):.3%} |" for t, ms in step_ms.items()),
        "",
        f"chat's extra = (chat − raw decode+sample) per token + send() / {args.tokens} tokens; bench's tg loop "
        f"costs {py['bench tg'] - py['raw decode']:+.2f} µs per token over the raw decode loop.",
        "",
    ]
    args.results.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
