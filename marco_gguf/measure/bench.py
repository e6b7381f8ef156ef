"""`bench()`: llama-bench's pp/tg tests on a Marco GGUF, this machine's memory bandwidth, and the roofline.

The tests follow llama-bench (tools/llama-bench/llama-bench.cpp): a context of n_prompt + n_gen,
one warm-up run, then for each repetition an empty KV cache and either `pp` (random tokens in
batches of n_batch, one llama_decode per batch) or `tg` (random tokens one llama_decode at a time,
no sampling). Generation on a CPU is bound by memory bandwidth: every token reads the active
weights once, so bandwidth / bytes-per-token is the speed a perfect implementation would reach.
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from marco_gguf.base.machine import usable_cpus
from marco_gguf.base.progress import Progress, ProgressEvent
from marco_gguf.gguf_io.info import bytes_per_token
from marco_gguf.llama.engine import Direct, Engine
from marco_gguf.llama.loader import check_model
from marco_gguf.llama.timing import time_generation, time_prompt

PROBE_MIB = 256  # per array; three arrays of 256 MiB are 24x this machine class's 32 MiB L3
PROBE_REPS = 10  # per probe; bench probes before and after its tests, so the best is of 2 x 10 runs


@dataclass(frozen=True)
class BenchRow:
    """One test at one thread count: tokens/s of every repetition and the figures derived from them."""

    model: str
    size_bytes: int
    bits_per_weight: float
    threads: int
    test: str  # llama-bench's names: pp512 = 512-token prompt, tg128 = 128 generated tokens
    samples: tuple[float, ...]  # tokens/s of each repetition
    bandwidth_gbps: float  # measured with the same number of threads
    roofline_tokens_per_s: float | None = None  # tg only: bandwidth / bytes read per generated token

    @property
    def tokens_per_s(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """Standard deviation over the repetitions (0 with one repetition)."""
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0

    @property
    def roofline_fraction(self) -> float | None:
        return self.tokens_per_s / self.roofline_tokens_per_s if self.roofline_tokens_per_s else None

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "samples": list(self.samples),
            "tokens_per_s": self.tokens_per_s,
            "spread": self.spread,
            "roofline_fraction": self.roofline_fraction,
        }


@dataclass(frozen=True)
class BenchResult:
    """All rows (iterating a BenchResult gives them), with the model and machine facts they rest on."""

    path: Path
    size_bytes: int
    bits_per_weight: float
    bytes_per_token: int  # weight bytes read per generated token
    bandwidth_gbps: dict[int, float]  # threads -> GB/s (10^9 bytes/s): the best probe run, the roofline's
    rows: tuple[BenchRow, ...] = field(default=())
    bandwidth_runs: dict[int, tuple[float, ...]] = field(default_factory=dict)  # threads -> GB/s of every probe run

    def __iter__(self) -> Iterator[BenchRow]:
        return iter(self.rows)

    def bandwidth_spread(self, threads: int) -> dict[str, float]:
        """The probe runs at `threads`: best (the roofline's), median and lowest GB/s, how many, and how much
        higher "of roofline" would be at the median bandwidth than at the best (its uncertainty)."""
        runs = self.bandwidth_runs[threads]
        best, median = max(runs), statistics.median(runs)
        return {
            "best": best,
            "median": median,
            "lowest": min(runs),
            "runs": len(runs),
            "uncertainty": best / median - 1,
        }

    def as_dict(self) -> dict:
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "bits_per_weight": self.bits_per_weight,
            "bytes_per_token": self.bytes_per_token,
            "bandwidth_gbps": self.bandwidth_gbps,
            "bandwidth_spread": {t: self.bandwidth_spread(t) for t in self.bandwidth_runs},
            "rows": [r.as_dict() for r in self.rows],
        }


def probe_bandwidth(*, threads: int = 1, mib: int = PROBE_MIB, reps: int = PROBE_REPS) -> dict[str, list[float]]:
    """GB/s of each of `reps` runs of `copy` (b = a) and `add` (c = a + b) over float64 arrays of `mib` MiB each,
    one slice per thread (NumPy releases the GIL inside these kernels). Bytes counted as STREAM counts them:
    2 per element for copy, 3 for add."""
    n = mib * 2**20 // 8
    a, b, c = np.ones(n), np.ones(n), np.zeros(n)  # written once, so no page faults while timing
    cuts = np.linspace(0, n, threads + 1).astype(int)
    slices = [slice(cuts[i], cuts[i + 1]) for i in range(threads)]
    kernels = {"copy": (2, lambda s: np.copyto(b[s], a[s])), "add": (3, lambda s: np.add(a[s], b[s], out=c[s]))}
    return {
        name: [streams * n * 8 / seconds / 1e9 for seconds in _timed_parallel(kernel, slices, reps)]
        for name, (streams, kernel) in kernels.items()
    }


def _probe_runs(threads: int) -> list[float]:
    """Each probe run's better kernel, in GB/s."""
    return [max(pair) for pair in zip(*probe_bandwidth(threads=threads).values())]


def _timed_parallel(kernel: Callable[[slice], object], slices: list[slice], reps: int) -> list[float]:
    """Seconds of `reps` runs (after one warm-up) of kernel over all slices at once, one thread per slice,
    each pinned to its own CPU when there are enough (a pool may run two slices on one worker or core).
    Each run spans the earliest start to the latest end the workers recorded themselves: timing from
    the main thread, which may be scheduled late on a busy 2-CPU machine, once gave 170 GB/s."""
    cpus = usable_cpus()
    go = threading.Barrier(len(slices))
    stamps = [[(0.0, 0.0)] * (reps + 1) for _ in slices]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            if len(cpus) >= len(slices) and hasattr(os, "sched_setaffinity"):  # Linux; elsewhere the OS places
                os.sched_setaffinity(0, {cpus[k]})  # affects this thread only
            for r in range(reps + 1):
                go.wait()
                t = time.perf_counter()
                kernel(slices[k])
                stamps[k][r] = (t, time.perf_counter())
        except threading.BrokenBarrierError:
            pass  # another worker failed; its error is the one to report
        except BaseException as e:
            errors.append(e)
            go.abort()  # release the others instead of leaving them waiting forever

    workers = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(len(slices))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    runs = [(min(s[r][0] for s in stamps), max(s[r][1] for s in stamps)) for r in range(1, reps + 1)]
    return [end - begin for begin, end in runs]  # run 0 warmed the threads and caches up


def _stepper(progress: Progress | None, total: int) -> Callable[[str], None]:
    """Counts the run's steps (bandwidth probes, warm-ups, repetitions) into progress events."""
    done = [0]

    def step(what: str) -> None:
        if progress:
            progress(ProgressEvent(done[0], total, "steps", what))
        done[0] += 1

    return step


def _samples(
    direct: Direct, name: str, n: int, timer, threads: int, reps: int, rng: random.Random, step: Callable[[str], None]
) -> tuple[float, ...]:
    """tokens/s of `reps` runs of one test after a warm-up, each on fresh random tokens."""
    vocab = direct.n_vocab
    step(f"{name}, {threads} thread(s), warm-up")
    timer(direct, [rng.randrange(vocab) for _ in range(n if timer is time_prompt else 1)])
    samples = []
    for r in range(reps):
        step(f"{name}, {threads} thread(s), repetition {r + 1}/{reps}")
        samples.append(n / timer(direct, [rng.randrange(vocab) for _ in range(n)]))
    return tuple(samples)


def bench(
    model: str | Path,
    *,
    n_prompt: int = 512,
    n_gen: int = 128,
    threads: int | Sequence[int] = (1, 2),
    reps: int = 5,
    progress: Progress | None = None,
) -> BenchResult:
    """pp{n_prompt} and tg{n_gen} at each thread count, `reps` times after one warm-up, plus bandwidth and roofline."""
    threads = (threads,) if isinstance(threads, int) else tuple(threads)
    if n_prompt < 0 or n_gen < 0 or n_prompt + n_gen == 0 or reps < 1 or not threads or min(threads) < 1:
        raise ValueError("need n_prompt + n_gen > 0, reps >= 1 and thread counts >= 1")
    info = check_model(model, ctx=n_prompt + n_gen)
    per_token = bytes_per_token(info)
    rng = random.Random(0)
    engine = Engine(model, ctx=max(n_prompt + n_gen, 16), parallel=1, threads=max(threads), queue_size=1)
    tests = [
        (name, n, timer)
        for name, n, timer in ((f"pp{n_prompt}", n_prompt, time_prompt), (f"tg{n_gen}", n_gen, time_generation))
        if n > 0
    ]
    rows, bandwidth, runs = [], {}, {}
    step = _stepper(progress, len(threads) * (2 + len(tests) * (1 + reps)))
    with engine:
        for t in threads:
            step(f"memory bandwidth, {t} thread(s)")
            before = _probe_runs(t)
            with engine.exclusive(threads=t) as direct:
                measured = [
                    (name, _samples(direct, name, n, timer, t, reps, rng, step), timer is time_generation)
                    for name, n, timer in tests
                ]
            # a shared host's bandwidth changes from one second to the next: the roofline takes the best run of
            # both probes (what the memory can do), the spread says how far the runs were from it
            step(f"memory bandwidth, {t} thread(s), again")
            runs[t] = tuple(before + _probe_runs(t))
            bandwidth[t] = max(runs[t])
            rows += [
                BenchRow(
                    info.path.name,
                    info.file_size,
                    info.bits_per_weight,
                    t,
                    name,
                    samples,
                    bandwidth[t],
                    bandwidth[t] * 1e9 / per_token if is_gen else None,
                )
                for name, samples, is_gen in measured
            ]
    return BenchResult(info.path, info.file_size, info.bits_per_weight, per_token, bandwidth, tuple(rows), runs)
