"""The plan's gains corrected by group: each group of tensors noised at once at the plan's own types.

The gains (sensitivity.py) are measured one tensor at a time, at the reference type's error, and the planner
sums gain x error over tensors. On the proxy that sum weighs the tied embedding 11-15x too lightly against
the rest at a plan's own types (BENCHMARKS.md, "Where the summed estimate goes wrong"): the other tensors'
noises overlap (a routing flip costs once, not per tensor) and KLD is concave in the noise, while the output
matrix's error flips no routing. Summed, the estimate at Q4_K_S's size gave the embedding Q5_K; corrected,
Q8_0, and mean KLD 0.154 -> 0.127.

So after the first plan, llama.cpp runs the calibration chunk once per group with every tensor of the group
noised at once at its planned type's measured error (an embedding's lookup quantized to that type). Each
group's gains are scaled by its measured KLD over the plan's estimate for it, and the budget is planned once
more. The groups: the output matrix (or the tied embedding), an untied embedding's lookup, and all the rest;
a few passes, not one per tensor. The KLDs are cached per first plan, beside the gains.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from gguf import GGMLQuantizationType as Q

from marco_gguf.base.progress import Progress, ProgressEvent
from marco_gguf.quant.measure_cache import read_keyed, write_keyed
from marco_gguf.quant.sensitivity import Passes

FORMAT = 1  # bump when what a group's pass measures changes
OWN_GROUP = ("output.weight", "token_embd.weight")  # tensors measured as a group of their own
REST = "the rest"


@dataclass(frozen=True)
class Group:
    """One group's KLD measured with its tensors noised at once, against the plan's estimate for it."""

    name: str
    tensors: int
    estimated: float  # the sum of gain x error at the planned types
    measured: float

    @property
    def ratio(self) -> float:
        ok = self.estimated > 0 and self.measured > 0
        return self.measured / self.estimated if ok else 1.0

    def as_dict(self) -> dict:
        return asdict(self) | {"ratio": self.ratio}


def groups(names: Iterable[str]) -> dict[str, list[str]]:
    names = sorted(names)
    out = {n.removesuffix(".weight"): [n] for n in OWN_GROUP if n in names}
    rest = [n for n in names if n not in OWN_GROUP]
    return out | ({REST: rest} if rest else {})


def cache_path(folder: Path, stem: str, gains_key: str) -> Path:
    return folder / f"{stem}.joint-{gains_key[:16]}.json"


def _plan_key(chosen: Mapping[str, Q]) -> str:
    text = "\n".join(f"{FORMAT} {n} {q.name}" for n, q in sorted(chosen.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _load(path: Path, gains_key: str) -> dict[str, dict[str, float]]:
    """Every first plan's group KLDs kept under these gains; {} when missing, damaged or of other gains."""
    doc = read_keyed(path, gains_key)
    if doc is None or doc.get("format") != FORMAT:
        return {}
    try:
        plans = {str(p): {str(g): float(k) for g, k in by.items()} for p, by in doc["plans"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    ok = all(math.isfinite(k) and k >= 0 for by in plans.values() for k in by.values())
    return plans if ok else {}


def measure_groups(
    path: Path,
    chosen: Mapping[str, Q],
    errors: Mapping[str, Mapping[str, float]],
    gains: Mapping[str, float],
    *,
    cache: tuple[Path, str],
    gains_key: str,
    threads: int | None = None,
    progress: Progress | None = None,
) -> tuple[Group, ...]:
    """Each group's KLD with its tensors noised at once at their `chosen` types' `errors` (unweighed), measured
    on the GGUF `path` or read from the cache, against the estimate from `gains`."""
    by_group = groups(chosen)
    file, key = cache_path(*cache, gains_key), _plan_key(chosen)
    kept = _load(file, gains_key)
    found = kept.get(key)
    if found is None or set(found) != set(by_group):
        found = {}
        with Passes(path, threads) as passes:
            for i, (label, names) in enumerate(by_group.items()):
                found[label] = passes.kld({n: (chosen[n], errors[n][chosen[n].name]) for n in names})
                if progress is not None:
                    progress(ProgressEvent(i + 1, len(by_group), "groups", f"joint noise: {label}"))
        write_keyed(file, {"key": gains_key, "format": FORMAT, "plans": kept | {key: found}})
    return tuple(
        Group(label, len(names), sum(gains[n] * errors[n][chosen[n].name] for n in names), found[label])
        for label, names in by_group.items()
    )


def corrected(gains: Mapping[str, float], found: Iterable[Group]) -> dict[str, float]:
    """Every gain scaled by its group's measured / estimated."""
    ratio = {g.name: g.ratio for g in found}
    scale = {n: ratio[label] for label, names in groups(gains).items() for n in names}
    return {n: g * scale[n] for n, g in gains.items()}
