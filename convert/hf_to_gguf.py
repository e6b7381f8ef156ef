#!/usr/bin/env python3
"""Standalone converter for people used to llama.cpp's convert_hf_to_gguf.py.

    python convert/hf_to_gguf.py ./Marco-Mini-Instruct --preset f16 [--outfile F] [--outdir D] [--threads N]

Same library call as `marco-gguf convert`; prints a one-line summary (or JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout without installing

from marco_gguf import convert
from marco_gguf.base.errors import MarcoGGUFError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="Hugging Face checkpoint folder")
    p.add_argument("--preset", default="q8_0", help="f32, f16, bf16, q8_0, ... or a .toml preset file")
    p.add_argument("--outfile", "-o", type=Path)
    p.add_argument("--outdir", type=Path)
    p.add_argument("--name")
    p.add_argument("--threads", "-t", type=int)
    p.add_argument("--tensor-type", action="append", default=[], dest="tensor_types", metavar="PATTERN=TYPE")
    p.add_argument("--force", action="store_true")
    p.add_argument("--revision", help="hub branch, tag or commit, when SOURCE is a hub id owner/name")
    p.add_argument("--json", action="store_true")
    args = vars(p.parse_args(argv))
    as_json = args.pop("json")
    try:
        result = convert(**args)
    except MarcoGGUFError as e:
        if os.environ.get("MARCO_GGUF_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(
            f"wrote {result.path} ({result.size_bytes:,} bytes, {result.bits_per_weight:.2f} bits/weight, "
            f"{result.n_tensors} tensors, {result.seconds:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
