#!/usr/bin/env python3
"""Full-size Marco-Nano and Marco-Mini shapes (random weights) converted and run on this machine.

Phases (results accumulate in --results JSON; `report` writes BENCHMARKS.md):
  convert  synth BF16 checkpoints with the published shapes, convert to Q4_K_M and Q8_0 in one pass,
           the two-step peer (BF16 GGUF + llama_model_quantize) on Nano side by side, and Mini with
           fewer layers to show how cost grows with depth. Free disk is checked before every step;
           checkpoints are deleted as soon as they are no longer needed.
  runtime  `marco-gguf bench` on the kept GGUFs: pp512 / tg128 at 1 and 2 threads, roofline, RAM; then deletes
           them (--keep keeps them).
  report   BENCHMARKS.md from the JSON.

    python benchmarks/full_size.py convert --workdir /work/bench --threads 2   # ~30 min, needs ~80 GB free
    python benchmarks/full_size.py runtime --workdir /work/bench --reps 5      # ~20 min
    python benchmarks/full_size.py report                                      # -> BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from one_pass_vs_two_step import ONE_PASS, TWO_STEP, machine, run

PUBLISHED = {
    ("nano", "q8_0"): ("Marco-Nano-Instruct Q8_0", 8_527_233_568),
    ("mini", "q4_k_m"): ("Marco-Mini-Instruct i1-Q4_K_M", 10_505_424_704),
}
MARGIN = 2 * 2**30
EXPLAIN_SIZES = (
    "The tensor data is the same size as the published files' by construction: every tensor gets the type "
    "llama.cpp's own quantizer gives it (our output is byte-identical to convert_hf_to_gguf.py + "
    "llama_model_quantize, tested), the data section is aligned to 32 bytes and depends only on shapes and types. "
    "The few kilobytes of difference are metadata: the published files carry their own general.* strings (name, "
    "URLs, tags, license, base model), the i1 file its quantize.imatrix.* keys (file, dataset, entry and chunk "
    "counts), and we write our own general.* keys. A different type for even the smallest quantized matrix "
    "(attn_k, 1024 x 1024; the router and norms stay F32) would change the size by more than 100 kB, so the gap "
    "cannot hide a type change."
)


def need(workdir: Path, nbytes: int, what: str) -> None:
    free = shutil.disk_usage(workdir).free
    if free < nbytes + MARGIN:
        raise SystemExit(
            f"not enough disk for {what}: {nbytes / 2**30:.1f} GiB + margin needed, "
            f"{free / 2**30:.1f} GiB free; nothing half-written was left"
        )


def save(results: Path, key: str, value: dict) -> None:
    data = json.loads(results.read_text()) if results.exists() else {}
    data[key] = value
    results.write_text(json.dumps(data, indent=2))
    print(key, json.dumps(value), flush=True)


def synth(workdir: Path, shape: str, layers: int | None, results: Path) -> Path:
    from marco_gguf import synthesize
    from marco_gguf.synth.model import SHAPES

    folder = workdir / f"{shape}-{layers or SHAPES[shape]['num_hidden_layers']}L-bf16"
    t = time.perf_counter()
    r = synthesize(folder, shape=shape, layers=layers, dtype="bf16", vocab="auto")
    save(
        results,
        f"synth/{folder.name}",
        {"seconds": time.perf_counter() - t, "bytes": r.size_bytes, "parameters": r.n_parameters, "shards": r.n_shards},
    )
    return folder


def one_pass(workdir: Path, ckpt: Path, preset: str, keep: bool, results: Path, threads: int) -> Path:
    out = workdir / f"out-{ckpt.name}-{preset}" / f"{ckpt.name}-{preset}.gguf"
    r = run(ONE_PASS, ckpt, out, threads, preset, keep=keep)
    save(results, f"convert/{ckpt.name}/{preset}", r)
    if keep:
        final = workdir / out.name
        out.rename(final)
        out.parent.rmdir()
        return final
    return out


def convert_nano(w: Path, res: Path, th: int) -> None:
    need(w, 16 * 10**9 * 2 + 14 * 10**9, "Marco-Nano (BF16 16 GB + two-step BF16 GGUF 16 GB + outputs)")
    nano = synth(w, "nano", None, res)
    one_pass(w, nano, "q4_k_m", True, res, th)
    save(res, f"two_step/{nano.name}/q4_k_m", run(TWO_STEP, nano, w / "out-two-step" / "x.gguf", th, "q4_k_m"))
    one_pass(w, nano, "q8_0", False, res, th)
    shutil.rmtree(nano)


def convert_mini(w: Path, res: Path, th: int) -> None:
    need(w, 35 * 10**9 + 29 * 10**9, "Marco-Mini (BF16 35 GB + Q4_K_M + Q8_0)")
    mini = synth(w, "mini", None, res)
    one_pass(w, mini, "q4_k_m", True, res, th)
    one_pass(w, mini, "q8_0", True, res, th)
    shutil.rmtree(mini)
    for layers in (7, 14):
        need(w, layers * (35 + 10.5) * 10**9 // 28, f"Marco-Mini with {layers} layers (BF16 + Q4_K_M)")
        ck = synth(w, "mini", layers, res)
        one_pass(w, ck, "q4_k_m", True, res, th)
        shutil.rmtree(ck)


def phase_convert(args: argparse.Namespace) -> None:
    args.workdir.mkdir(parents=True, exist_ok=True)
    save(args.results, "machine", machine_facts(args.workdir))
    for shape in args.shapes.split(","):
        {"nano": convert_nano, "mini": convert_mini}[shape](args.workdir, args.results, args.threads)


def bench_cli(model: Path, reps: int) -> dict:
    """`marco-gguf bench MODEL --json` in its own process: its rows, wall time, peak RSS (wait4) and the peaks of
    its anonymous and file-backed resident memory (sampled): mmapped weights are page cache, repacked ones are not."""
    cmd = [
        sys.executable,
        "-m",
        "marco_gguf",
        "bench",
        str(model),
        "-p",
        "512",
        "-n",
        "128",
        "--threads",
        "1,2",
        "--reps",
        str(reps),
        "--json",
    ]
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        peaks, stop = {"RssAnon": 0, "RssFile": 0}, threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(proc.pid, peaks, stop), daemon=True)
        sampler.start()
        out = proc.stdout.read()
        stop.set()
        sampler.join()
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status):
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed: {err.read()}")
    return {
        "seconds": time.perf_counter() - t,
        "peak_rss": usage.ru_maxrss * 1024,
        "peak_anon": peaks["RssAnon"],
        "peak_file": peaks["RssFile"],
        "rows": json.loads(out),
    }


def sample_rss(pid: int, peaks: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                key = line.split(":")[0]
                if key in peaks:
                    peaks[key] = max(peaks[key], int(line.split()[1]) * 1024)
        except OSError:
            return
        stop.wait(0.1)


def machine_facts(workdir: Path) -> dict:
    """What the figures depend on: CPU (lscpu), RAM, disk, and the SIMD llama.cpp was built with."""
    import llama_cpp

    cpu = dict(
        line.split(":", 1)
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        if ":" in line
    )
    cpu = {k.strip(): v.strip() for k, v in cpu.items()}
    detail = ", ".join(
        f"{k} {cpu[k]}" for k in ("CPU family", "Model", "L2 cache", "L3 cache", "Hypervisor vendor") if k in cpu
    )
    info = llama_cpp.llama_print_system_info().decode().removeprefix("CPU : ")
    simd = [f.split(" =")[0] for f in info.split(" | ") if f.endswith("= 1")]
    return {
        "machine": f"{machine()} ({detail})",
        "disk": disk(workdir),
        "date": time.strftime("%Y-%m-%d"),
        "llama_cpp": f"llama-cpp-python {llama_cpp.__version__}, built with {' '.join(simd)}",
    }


def phase_runtime(args: argparse.Namespace) -> None:
    from marco_gguf.gguf_io.info import read_info
    from marco_gguf.measure.bench import bytes_per_token

    data = json.loads(args.results.read_text()) if args.results.exists() else {}
    here = machine_facts(args.workdir)
    if not here["machine"].startswith(data.get("machine", {}).get("machine", "")):
        raise SystemExit(f"the conversion figures in {args.results} come from another machine: {data['machine']}")
    save(args.results, "machine", here)

    for model in sorted(args.workdir.glob("*.gguf")):
        info = read_info(model)
        facts = {
            "size": info.file_size,
            "bits_per_weight": info.bits_per_weight,
            "layers": info.hparams.get("block_count"),
            "bytes_per_token": bytes_per_token(info),
            "ram_ctx_8192": info.ram_needed(8192)["total"],
            "ram_ctx_640": info.ram_needed(640)["total"],
        }
        save(args.results, f"runtime/{model.name}", {**facts, **bench_cli(model, args.reps)})
        if not args.keep:
            model.unlink()  # the report needs only the JSON; leave no 40 GB of GGUFs behind


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def report(data: dict) -> str:
    """BENCHMARKS.md: conversion table, published-size comparison, two-step ratio, runtime table."""
    reps = next((len(r["samples"]) for k, v in data.items() if k.startswith("runtime/") for r in v["rows"]), 0)
    m = data.get("machine", {"machine": machine(), "disk": "?", "date": "?"})
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {m['machine']}; disk: {m['disk']}; {m.get('llama_cpp', '')}; "
        f"run {m['date']}. Random-weight checkpoints with the exact "
        "published shapes (`marco-gguf synth`), BF16 source, 2 threads. Conversions are single runs on a "
        "shared 2-core machine (expect ±15 % noise; ratios come from runs side by side); runtime figures are "
        f"medians of {reps} repetitions.",
        "",
        "## Conversion (one pass)",
        "",
        "| source | preset | wall (s) | peak RSS (MiB) | peak extra disk (GiB) | output (bytes) |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in data.items():
        if key.startswith("convert/"):
            _, ck, preset = key.split("/")
            lines.append(
                f"| {ck} | {preset} | {r['wall_s']:.0f} | {r['peak_rss'] / 2**20:.0f} | {_gib(r['peak_disk'])}"
                f" | {r['size']:,} |"
            )
    lines += [
        "",
        "Synthesizing the checkpoints: "
        + ", ".join(
            f"{k.split('/')[1]} {v['bytes'] / 1e9:.1f} GB in {v['seconds']:.0f} s"
            for k, v in data.items()
            if k.startswith("synth/")
        )
        + ".",
        "",
    ]
    lines += published_sizes(data)
    two = data.get("two_step/nano-28L-bf16/q4_k_m")
    one = data.get("convert/nano-28L-bf16/q4_k_m")
    if two and one:
        lines += [
            "",
            "## One pass vs two step (Marco-Nano, Q4_K_M)",
            "",
            "| method | wall (s) | peak RSS (MiB) | peak extra disk (GiB) |",
            "|---|---|---|---|",
            f"| one pass | {one['wall_s']:.0f} | {one['peak_rss'] / 2**20:.0f} | {_gib(one['peak_disk'])} |",
            f"| BF16 GGUF + llama_model_quantize | {two['wall_s']:.0f} | {two['peak_rss'] / 2**20:.0f} | "
            f"{_gib(two['peak_disk'])} |",
            "",
            f"One pass / two step: **{one['wall_s'] / two['wall_s']:.2f}x** wall time; identical tensors: "
            f"{'yes' if one['sha256'] == two['sha256'] else 'NO'}.",
        ]
    runtime = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith("runtime/")}
    if runtime:
        lines += runtime_table(runtime) + depth_table(runtime, data)
    return "\n".join(lines) + "\n"


def published_sizes(data: dict) -> list[str]:
    lines = ["## Output sizes against the published files", ""]
    for (shape, preset), (label, published) in PUBLISHED.items():
        ours = data.get(f"convert/{shape}-28L-bf16/{preset}")
        if ours:
            head = ours.get("header_bytes")
            split = f" = {head:,} header and metadata + {ours['size'] - head:,} tensor data" if head else ""
            lines.append(
                f"- {label}: published {published:,} bytes; ours {ours['size']:,}{split}; "
                f"difference {ours['size'] - published:+,} bytes "
                f"({(ours['size'] - published) / published:+.5%})."
            )
    return lines + ["", EXPLAIN_SIZES]


def by_test(v: dict) -> dict[tuple[int, str], dict]:
    """A bench's rows keyed by (threads, "pp" or "tg")."""
    return {(r["threads"], r["test"][:2]): r for r in v["rows"]}


def bandwidths(runtime: dict) -> dict[int, list[float]]:
    """The bandwidth each model's bench measured, by thread count (its pp and tg rows share one)."""
    per_bench = {(model, t): r["bandwidth_gbps"] for model, v in runtime.items() for (t, _), r in by_test(v).items()}
    out: dict[int, list[float]] = {}
    for (_, t), gbps in per_bench.items():
        out.setdefault(t, []).append(gbps)
    return {t: sorted(g) for t, g in sorted(out.items())}


def runtime_table(runtime: dict) -> list[str]:
    probes = bandwidths(runtime)
    bw = {t: max(g) for t, g in probes.items()}
    lines = [
        "",
        "## Runtime (`marco-gguf bench -p 512 -n 128 --threads 1,2`)",
        "",
        "tokens/s: median ± standard deviation of the repetitions after a warm-up. Roofline = memory bandwidth / "
        "weight bytes read per generated token, with the best bandwidth any probe of the run measured at that "
        "thread count (STREAM's best-of convention: the roofline is a ceiling). RAM: marco-gguf's estimate for "
        "`--ctx 8192` (weights + KV cache + compute buffers); the bench process's peak anonymous memory (weights "
        "llama.cpp repacked for its AVX2 kernels, Q4_K only; KV cache; buffers; the bandwidth probe's 0.75 GiB "
        "of arrays) and peak RSS, which also counts the mmapped file's pages, repacked tensors' included, that "
        "the kernel can drop under pressure.",
        "",
        "| model | layers | size (GiB) | bytes/token (MiB) | RAM ctx 8192 (GiB) | peak anon / RSS (GiB) "
        "| threads | pp512 t/s | tg128 t/s | roofline t/s | of roofline |",
        "|---" * 11 + "|",
    ]
    for model, v in sorted(runtime.items(), key=lambda kv: (-kv[1]["layers"], kv[0])):
        by = by_test(v)
        for threads in sorted({t for t, _ in by}):
            pp, tg = by[(threads, "pp")], by[(threads, "tg")]
            roof = bw[threads] * 1e9 / v["bytes_per_token"]
            lines.append(
                f"| {model.removesuffix('.gguf')} | {v['layers']} | {_gib(v['size'])} | "
                f"{v['bytes_per_token'] / 2**20:.0f} | {_gib(v['ram_ctx_8192'])} | "
                f"{_gib(v.get('peak_anon', 0))} / {_gib(v['peak_rss'])} | {threads} | "
                f"{pp['tokens_per_s']:.1f} ± {pp['spread']:.1f} | "
                f"{tg['tokens_per_s']:.1f} ± {tg['spread']:.1f} | "
                f"{roof:.0f} | {tg['tokens_per_s'] / roof:.0%} |"
            )
    lines += [
        "",
        "Memory bandwidth probes (STREAM-like, GB/s): "
        + "; ".join(
            f"{thread_label(t)}: median {statistics.median(g):.1f}, range {g[0]:.1f}-{g[-1]:.1f}"
            for t, g in probes.items()
        )
        + ".",
    ]
    return lines


def depth_table(runtime: dict, data: dict) -> list[str]:
    """Mini Q4_K_M at 7, 14 and 28 layers: conversion and generation cost against depth, least-squares lines."""
    rows = sorted((v["layers"], v) for m, v in runtime.items() if m.startswith("mini-") and "q4_k_m" in m)
    if len(rows) < 2:
        return []
    lines = [
        "",
        "## Cost against depth (Marco-Mini widths, Q4_K_M)",
        "",
        "| layers | convert (s) | convert peak RSS (MiB) | size (GiB) | bytes/token (MiB) "
        "| tg128 ms/token, 1 thread | 2 threads | pp512 ms/token, 2 threads |",
        "|---" * 8 + "|",
    ]
    ms, conv = {}, {}
    for layers, v in rows:
        by = {key: r["tokens_per_s"] for key, r in by_test(v).items()}
        ms[layers] = {t: 1000 / by[(t, "tg")] for t in (1, 2)}
        c = data[f"convert/mini-{layers}L-bf16/q4_k_m"]
        conv[layers] = c["wall_s"]
        lines.append(
            f"| {layers} | {c['wall_s']:.0f} | {c['peak_rss'] / 2**20:.0f} | {_gib(v['size'])} | "
            f"{v['bytes_per_token'] / 2**20:.0f} | {ms[layers][1]:.1f} | {ms[layers][2]:.1f} | "
            f"{1000 / by[(2, 'pp')]:.2f} |"
        )
    fit = [("conversion", list(conv.values()), "s")] + [
        (f"generation, {thread_label(t)}", [m[t] for m in ms.values()], "ms") for t in (1, 2)
    ]
    parts = []
    for label, ys, unit in fit:
        slope, icept = statistics.linear_regression(list(ms), ys)
        parts.append(f"{label}: {icept:.1f} {unit} + {slope:.2f} {unit} per layer")
    return lines + [
        "",
        "Least-squares lines, fixed + per-layer cost: " + "; ".join(parts) + ". Conversion memory does "
        "not grow with depth (one layer's experts at a time). The 7- and 14-layer sources (8.9 and "
        "17.4 GB) fit in this machine's page cache right after synthesis, the 34.5 GB one does not and is "
        "read back from disk: that bends the conversion line upward at 28 layers. The fixed part of "
        "generation is the tied 151,936 x 1,024 output matrix, sampling and llama.cpp's per-token "
        "overhead.",
    ]


def thread_label(n: int) -> str:
    return f"{n} thread" + ("s" if n > 1 else "")


def disk(path: Path) -> str:
    """The device holding path and its size, from df."""
    try:
        dev, size = subprocess.run(
            ["df", "--output=source,size", str(path)], capture_output=True, text=True
        ).stdout.split()[2:4]
        return f"{dev}, {int(size) / 2**20:.0f} GiB"
    except (OSError, ValueError):
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=("convert", "runtime", "report"))
    ap.add_argument("--workdir", type=Path, default=Path("/work/bench"))
    ap.add_argument("--results", type=Path, default=Path(__file__).with_name("full_size.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="runtime phase: keep the GGUFs afterwards")
    ap.add_argument("--shapes", default="nano,mini", help="convert phase: which models, in order")
    args = ap.parse_args()
    if args.phase == "convert":
        phase_convert(args)
    elif args.phase == "runtime":
        phase_runtime(args)
    else:
        out = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
        out.write_text(report(json.loads(args.results.read_text())))
        print(out.read_text())


if __name__ == "__main__":
    main()
