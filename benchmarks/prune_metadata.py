"""Reading a GGUF's keys for `prune` (which copies them all, with their types, into the pruned file): gguf-py's
GGUFReader, as prune used before, against our reader (gguf_io/reader.py), side by side, median of `--reps`.
The vocabulary dominates: GGUFReader builds a NumPy view per token and per merge.

    python benchmarks/prune_metadata.py MODEL.gguf --reps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import gguf

from marco_gguf.gguf_io.reader import read_header


def with_gguf_py(path: Path) -> dict:
    """The metadata as prune built it before (experts/prune_gguf.py, until issue 26)."""
    V = gguf.GGUFValueType
    out = {}
    for name, f in gguf.GGUFReader(path).fields.items():
        if not name.startswith("GGUF."):
            out[name] = gguf.GGUFValue(f.contents(), f.types[0], f.types[-1] if f.types[0] == V.ARRAY else None)
    return out


def with_ours(path: Path) -> dict:
    h = read_header(path)
    return {k: gguf.GGUFValue(v, h.types[k], h.item_types.get(k)) for k, v in h.fields.items()}


def timed(fn, path: Path, reps: int) -> float:
    seconds = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(path)
        seconds.append(time.perf_counter() - t)
    return statistics.median(seconds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    a, b = with_gguf_py(args.gguf), with_ours(args.gguf)
    same = a.keys() == b.keys() and all(
        (a[k].type, a[k].sub_type, a[k].value) == (b[k].type, b[k].sub_type, b[k].value) for k in a
    )
    old, new = timed(with_gguf_py, args.gguf, args.reps), timed(with_ours, args.gguf, args.reps)
    tokens = len(read_header(args.gguf).fields.get("tokenizer.ggml.tokens", ()))
    result = {"file": args.gguf.name, "size": args.gguf.stat().st_size, "tokens": tokens, "keys": len(a)}
    print(json.dumps({**result, "same_keys_types_values": same, "gguf_py_s": old, "ours_s": new, "ratio": old / new}))


if __name__ == "__main__":
    main()
