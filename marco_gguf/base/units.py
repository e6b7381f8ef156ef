"""Sizes as people read them, one convention everywhere: binary units, as llama.cpp's own tools print them
(llama-bench's "size" column is GiB, the model loader's buffers MiB), so a figure here compares directly."""

from __future__ import annotations

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: float) -> str:
    """1536 -> "1.50 KiB"; whole bytes below 1 KiB; two decimals above."""
    for unit in UNITS:
        if abs(n) < 1024 or unit == UNITS[-1]:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
