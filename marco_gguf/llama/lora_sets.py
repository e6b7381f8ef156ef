"""Per-request LoRA scales (llama-server's `lora` request field and POST /lora-adapters) on one context.

Every job carries the scales of the engine's adapters it runs with (a tuple, one per adapter). One
llama_decode applies one set of scales to the whole batch, so a batch holds only jobs of one set: each
step decodes the set whose last turn is the oldest (the oldest job's set first), so two sets take turns
step by step instead of one waiting for the other to end. A slot's KV cache holds keys and values computed
under the scales of the job that filled it: it is tagged with them, and a job with other scales finds no
common prefix in it (llama-server clears a slot's cache when its adapters change, launch_slot_with_task).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from marco_gguf.base.errors import RequestError
from marco_gguf.llama.jobs import Job

Scales = tuple[float, ...]


def check_scales(scales: Sequence[float], n_adapters: int) -> Scales:
    """`scales` as a job's tuple, one per loaded adapter."""
    if len(scales) != n_adapters:
        raise RequestError(f"{len(scales)} LoRA scales for {n_adapters} adapters", param="lora")
    return tuple(float(s) for s in scales)


class Tagged(Protocol):
    scales: Scales  # the scales a slot's KV cache was computed under


def made_for(job: Job) -> Callable[[Tagged], bool]:
    """Whether a slot's cache was computed under `job`'s scales (only then may the job reuse a prefix of it)."""
    return lambda slot: slot.scales == job.scales


class Turns:
    """Which scales the next decode runs: the set decoded least recently, among those of the running jobs."""

    def __init__(self) -> None:
        self._last: dict[Scales, int] = {}  # set -> the step it last ran at (only sets of running jobs)
        self._step = 0

    def pick(self, jobs: Iterable[Job]) -> Scales | None:
        """The scales of this step's batch (None when no job runs); the oldest job breaks ties."""
        jobs = list(jobs)
        if not jobs:
            return None
        first = min(jobs, key=lambda j: (self._last.get(j.scales, -1), j.submitted))
        self._step += 1
        running = {j.scales for j in jobs}
        self._last = {s: step for s, step in self._last.items() if s in running}
        self._last[first.scales] = self._step
        return first.scales
