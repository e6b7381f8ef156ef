"""Facts about this computer that running a model depends on: physical cores, available memory, AMX."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path


def physical_cores() -> int:
    """Distinct (package, core) pairs in sysfs, capped by this process's CPU affinity."""
    cores = set()
    for topo in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology"):
        with contextlib.suppress(OSError):
            cores.add(((topo / "physical_package_id").read_text(), (topo / "core_id").read_text()))
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(len(cores) or usable, usable))


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (else psutil), in bytes; None when neither can tell."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


@functools.lru_cache(maxsize=1)
def amx_kernels_built() -> bool:
    """True when the installed llama.cpp carries its AMX matrix kernels (built with -march=native on a CPU with AMX).

    Those kernels crash at their first tile instruction in this llama.cpp (SIGILL, seen on this project's
    Xeon build machine): the tile configuration is built on the stack and optimized away (ggml-org/llama.cpp
    pull request 26954). They are reached only through llama.cpp's extra weight buffer types."""
    import llama_cpp

    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()
