"""The figures `experts` reports, computed from an ExpertUsage.

Per text and layer: how many experts carry 50 / 90 / 99 % of the routing mass (the summed gate
weights; the fewest experts, taken from the most used), the entropy of that mass over the experts in bits
(log2 of the expert count when routing is uniform), and the experts no token reached. Between texts:
each text's "core" experts in a layer are the fewest carrying `core_mass` of its routing mass; the
similarity of two texts is the Jaccard overlap |A ∩ B| / |A ∪ B| of their core sets, averaged over
layers, and a text's specific experts are its core experts in no other text's core set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

MASS_LEVELS = (0.5, 0.9, 0.99)
CORE_MASS = 0.5


@dataclass(frozen=True)
class LayerFigures:
    layer: int
    experts_for_mass: dict[str, int]  # "50" / "90" / "99" -> experts carrying that share of the mass
    entropy_bits: float
    never_used: list[int]
    specific: list[int]  # core experts of this text only (empty with one text)


@dataclass(frozen=True)
class TextFigures:
    label: str
    tokens: int
    layers: list[LayerFigures]

    @property
    def never_used(self) -> int:
        return sum(len(f.never_used) for f in self.layers)

    @property
    def specific(self) -> int:
        return sum(len(f.specific) for f in self.layers)

    def median(self, level: str) -> float:
        return float(np.median([f.experts_for_mass[level] for f in self.layers]))


@dataclass(frozen=True)
class UsageReport:
    experts: int
    experts_per_token: int
    core_mass: float
    texts: list[TextFigures]
    similarity: list[list[float]]  # text x text mean Jaccard of core sets

    def as_dict(self) -> dict:
        d = asdict(self)
        for t, figures in zip(d["texts"], self.texts):
            t.update(never_used_total=figures.never_used, specific_total=figures.specific)
        return d


def ranked(scores: np.ndarray) -> np.ndarray:
    """Expert indices from the highest score down; equal scores keep index order."""
    return np.argsort(-scores, kind="stable")


def experts_for_mass(weight: np.ndarray, share: float) -> int:
    """The fewest experts whose routing mass reaches `share` of the layer's total (0 when nothing was routed)."""
    total = weight.sum()
    if total <= 0:
        return 0
    cum = np.cumsum(weight[ranked(weight)])
    return int(np.searchsorted(cum, share * total * (1 - 1e-12), side="left")) + 1


def entropy_bits(weight: np.ndarray) -> float:
    total = weight.sum()
    if total <= 0:
        return 0.0
    p = weight[weight > 0] / total
    return float(-(p * np.log2(p)).sum())


def core_set(weight: np.ndarray, mass: float) -> set[int]:
    return set(ranked(weight)[: experts_for_mass(weight, mass)].tolist())


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def build_report(usage, core_mass: float = CORE_MASS) -> UsageReport:
    """All of `experts`' figures for an ExpertUsage."""
    texts, layers = usage.texts, usage.model.layers
    cores = [[core_set(t.weight[layer], core_mass) for layer in range(layers)] for t in texts]
    figures = []
    for i, t in enumerate(texts):
        rows = []
        for layer in range(layers):
            others = set().union(*(cores[j][layer] for j in range(len(texts)) if j != i))
            w = t.weight[layer]
            rows.append(
                LayerFigures(
                    layer,
                    {f"{round(100 * m)}": experts_for_mass(w, m) for m in MASS_LEVELS},
                    entropy_bits(w),
                    np.flatnonzero(t.counts[layer] == 0).tolist(),
                    sorted(cores[i][layer] - others) if len(texts) > 1 else [],
                )
            )
        figures.append(TextFigures(t.label, t.tokens, rows))
    similarity = [
        [float(np.mean([jaccard(a[layer], b[layer]) for layer in range(layers)])) for b in cores] for a in cores
    ]
    return UsageReport(usage.model.experts, usage.model.experts_per_token, core_mass, figures, similarity)
