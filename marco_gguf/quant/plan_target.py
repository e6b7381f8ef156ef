"""What a plan aims at: `--target-size` (a whole file's bytes) or `--target-bpw`, and the `--types` to choose from.

Sizes: decimal units as disks and the hub count them (8GB = 8 x 10^9 bytes), binary ones spelled out (7.5GiB);
a plain number is bytes. The target's label names the file: `<model>[-i1]-P8GB.gguf`, `<model>-i1-P3.6BPW.gguf`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gguf import GGMLQuantizationType as Q

from marco_gguf.base.errors import PlanError
from marco_gguf.quant.measure_types import ACCEPTED, CANDIDATES, is_iq

SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
SIZE_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
UNIT_SPELLING = {"B": "B", "KB": "KB", "MB": "MB", "GB": "GB", "TB": "TB", "KIB": "KiB", "MIB": "MiB"}
UNIT_SPELLING |= {"GIB": "GiB", "TIB": "TiB"}


@dataclass(frozen=True)
class Target:
    """What to fit: a whole-file size in bytes or bits per weight; `label` names the file (`-P8GB`)."""

    label: str
    size: int | None = None
    bpw: float | None = None

    @property
    def name(self) -> str:
        return f"P{self.label}"


def parse_target(target_size: str | int | None, target_bpw: float | None) -> Target:
    if (target_size is None) == (target_bpw is None):
        raise PlanError("give one of --target-size and --target-bpw")
    if target_bpw is not None:
        if not (isinstance(target_bpw, int | float) and math.isfinite(target_bpw) and target_bpw > 0):
            raise PlanError(f"--target-bpw {target_bpw!r}: not a positive number of bits per weight", "e.g. 3.6")
        return Target(f"{float(target_bpw):g}BPW", bpw=float(target_bpw))
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(target_size))
    unit = m.group(2).upper() if m else ""
    if m is None or (unit and unit not in SIZE_UNITS) or float(m.group(1)) <= 0:
        raise PlanError(
            f"--target-size {target_size!r}: not a size", "e.g. 8GB (8 x 10^9 bytes), 7.5GiB, or a number of bytes"
        )
    size = math.floor(float(m.group(1)) * SIZE_UNITS[unit or "B"])
    return Target(f"{m.group(1)}{UNIT_SPELLING[unit or 'B']}", size=size)


def parse_types(types: Sequence[str] | None, *, imatrix: bool) -> tuple[Q, ...]:
    """`--types` names (any case), or the default candidates; IQ types need an imatrix."""
    if not types:
        return tuple(q for q in CANDIDATES if imatrix or not is_iq(q))
    out = []
    for name in types:
        q = Q.__members__.get(str(name).upper())
        if q not in ACCEPTED:
            raise PlanError(f"--types: {name!r} is not a type the plan can use", f"accepted: {names_of(ACCEPTED)}")
        if is_iq(q) and not imatrix:
            raise PlanError(
                f"--types: {q.name} is an IQ type, which the plan uses only with an importance matrix",
                "pass --imatrix FILE or --calibrate, or leave the IQ types out",
            )
        if q not in out:
            out.append(q)
    return tuple(sorted(out, key=ACCEPTED.index))


def names_of(types: Sequence[Q]) -> str:
    return ", ".join(q.name.lower() for q in types)
