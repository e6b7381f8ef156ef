"""Bounded memory: peak RSS of a conversion does not grow with model size."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from checkpoints import Spec

# 64 experts of 512 x 256: one layer's stacked expert tensor is 32 MiB in float32
SMALL = Spec(layers=2, experts=64, expert_ff=512, shard_size="200MB")
LARGE = Spec(layers=8, experts=64, expert_ff=512, shard_size="200MB")
STACKED_EXPERT_BYTES = 64 * 512 * 256 * 4

PROBE = """
import json, sys
from marco_gguf import convert
r = convert(sys.argv[1], preset=sys.argv[2], outfile=sys.argv[3], threads=2, force=True)
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"peak_rss": hwm, "seconds": r.seconds, "size": r.size_bytes}))
"""


def peak_rss(folder, preset, out) -> dict:
    # a fresh process: VmHWM is its own high-water mark (ru_maxrss would inherit pytest's)
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(folder), preset, str(out)], capture_output=True, text=True, check=True
    )
    return json.loads(run.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["q8_0", "f32"])
def test_peak_rss_does_not_grow_with_layers(preset, checkpoint, tmp_path):
    small = peak_rss(checkpoint(SMALL), preset, tmp_path / "small.gguf")
    large = peak_rss(checkpoint(LARGE), preset, tmp_path / "large.gguf")
    growth = large["peak_rss"] - small["peak_rss"]
    print(
        f"{preset}: peak RSS {small['peak_rss'] / 2**20:.1f} MiB (2 layers, {small['size'] / 2**20:.0f} MiB out, "
        f"{small['seconds']:.2f} s) vs {large['peak_rss'] / 2**20:.1f} MiB (8 layers, "
        f"{large['size'] / 2**20:.0f} MiB out, {large['seconds']:.2f} s)"
    )
    assert large["size"] > 3.5 * small["size"]  # the large model really is ~4x
    assert growth < STACKED_EXPERT_BYTES
