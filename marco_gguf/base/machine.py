"""Facts about this computer that running a model depends on: usable CPUs, physical cores, available memory.

psutil answers on Linux, macOS and Windows alike (it reads /proc and /sys on Linux, sysctl and the Mach and
Win32 APIs elsewhere), so nothing here depends on a Linux-only file. Whether llama.cpp carries its AMX kernels
is a fact of the llama.cpp build, asked in llama/loader.py.
"""

from __future__ import annotations

import os

import psutil


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity where the OS has one: Linux, Windows)."""
    try:
        return sorted(psutil.Process().cpu_affinity() or [])
    except (AttributeError, NotImplementedError, psutil.Error):  # macOS has no affinity: every CPU is usable
        return list(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores, capped by the CPUs this process may use: llama.cpp's default threads (one per core, as
    its cpu_get_num_math does), since a second hyperthread on a core adds no matrix throughput."""
    usable = len(usable_cpus()) or 1
    cores = psutil.cpu_count(logical=False) or usable
    return max(1, min(cores, usable))


def available_memory() -> int | None:
    """Memory that can be given to a new process without swapping, in bytes (psutil's `available`: MemAvailable
    on Linux); None when the OS does not tell."""
    try:
        return int(psutil.virtual_memory().available)
    except (OSError, psutil.Error):
        return None
