"""What `experts` measures, as plain data: each text's routing per layer and expert, and the run that measured it.

Shared by the measurement (usage.py), the usage file (usage_file.py), the report and the plots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from marco_gguf.experts.identity import ModelIdentity


@dataclass(frozen=True)
class TextUsage:
    """One text's routing, per layer x expert."""

    label: str
    source: str
    tokens: int
    counts: np.ndarray  # int64 [layers, experts]: tokens routed to the expert
    weight: np.ndarray  # float64 [layers, experts]: summed gate weight (the routing mass)
    reap_sum: np.ndarray  # float64 [layers, experts]: summed gate weight x ||expert output||
    routing: np.ndarray | None = field(default=None, repr=False)  # int32 [layers, tokens, k], with keep_routing
    chunks: tuple[tuple[int, ...], ...] | None = field(default=None, repr=False)  # the token ids evaluated

    @property
    def reap(self) -> np.ndarray:
        """REAP saliency: mean over the expert's tokens of gate weight x ||output|| (0 for an unused expert)."""
        return np.divide(self.reap_sum, self.counts, out=np.zeros_like(self.reap_sum), where=self.counts > 0)

    def as_dict(self) -> dict:
        return {
            "label": self.label,
            "source": self.source,
            "tokens": self.tokens,
            "counts": self.counts.tolist(),
            "weight": self.weight.tolist(),
            "reap_sum": self.reap_sum.tolist(),
        }


@dataclass(frozen=True)
class ExpertUsage:
    """What `expert_usage` measured: the model it ran and each text's routing."""

    model: ModelIdentity
    model_path: str
    ctx: int
    texts: tuple[TextUsage, ...]
    seconds: float = 0.0
    tokens_per_s: float = 0.0

    @property
    def labels(self) -> list[str]:
        return [t.label for t in self.texts]

    def combined(self) -> TextUsage:
        """All texts as one."""
        t = self.texts
        return TextUsage(
            "+".join(self.labels),
            ", ".join(x.source for x in t),
            sum(x.tokens for x in t),
            np.sum([x.counts for x in t], axis=0),
            np.sum([x.weight for x in t], axis=0),
            np.sum([x.reap_sum for x in t], axis=0),
        )

    def as_dict(self) -> dict:
        return {
            "model": self.model.as_dict(),
            "model_path": self.model_path,
            "ctx": self.ctx,
            "seconds": self.seconds,
            "tokens_per_s": self.tokens_per_s,
            "texts": [t.as_dict() for t in self.texts],
        }
