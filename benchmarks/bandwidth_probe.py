"""How steady is bench's bandwidth probe? Side by side in one run, alternating, `--trials` times: the old
probe (best of 5 runs before the tests and 5 after) and the current one (best of 10 + 10), each trial's best
GB/s and the spread of its runs. A roofline is only as steady as the best it divides by.

    python benchmarks/bandwidth_probe.py --threads 2 --trials 6 > benchmarks/bandwidth_probe.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

from marco_gguf.measure.bench import PROBE_REPS, probe_bandwidth


def runs(threads: int, reps: int) -> list[float]:
    """Two probes, as bench makes them (before and after its tests): each run's better kernel, GB/s."""
    out: list[float] = []
    for _ in range(2):
        out += [max(pair) for pair in zip(*probe_bandwidth(threads=threads, reps=reps).values())]
    return out


def summary(bests: list[float]) -> dict[str, float]:
    return {
        "median_best": statistics.median(bests),
        "lowest_best": min(bests),
        "highest_best": max(bests),
        "swing": max(bests) / min(bests) - 1,  # how far apart two bench runs' rooflines can be
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()
    trials: dict[str, list[dict]] = {"old: best of 5 + 5": [], f"now: best of {PROBE_REPS} + {PROBE_REPS}": []}
    for _ in range(args.trials):
        for got, reps in zip(trials.values(), (5, PROBE_REPS)):
            r = runs(args.threads, reps)
            got.append({"best": max(r), "median": statistics.median(r), "lowest": min(r)})
    print(
        json.dumps(
            {
                "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
                "trials": trials,
                "summary": {name: summary([t["best"] for t in got]) for name, got in trials.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
