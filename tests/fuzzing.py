"""Seeded damage to checkpoint files, and the verdict on what `convert()` made of it.

Shared by tests/test_fuzz_checkpoint.py (a few hundred cases) and benchmarks/fuzz_campaign.py
(thousands). Every case copies a good checkpoint (hard links; a damaged file is written anew so the
original is never touched), damages one file in one of the FAMILIES, converts it and classifies:

- refused:  a MarcoGGUFError, and nothing was left in the output folder or beside the source;
- harmless: converted, and every tensor equals the undamaged conversion's (type, shape, bytes);
- crash:    any other exception (a traceback a user would see);
- wrong:    converted, but some tensor differs: a damaged input turned silently into a wrong file;
- leftover: refused, but a file was left behind.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marco_gguf import convert
from marco_gguf.base.errors import MarcoGGUFError
from marco_gguf.gguf_io.reader import read_header

FAMILIES = ("st-length", "st-bytes", "st-json", "st-size", "config", "index", "tokenizer", "tokenizer-config")
OUTCOMES = ("refused", "harmless", "crash", "wrong", "leftover")
# roots within each JSON file that hold what the converter reads; mutations start there half the time
ROOTS = {
    "config": [()],
    "index": [("weight_map",)],
    "tokenizer": [
        ("model", "vocab"),
        ("model", "merges"),
        ("added_tokens",),
        ("pre_tokenizer",),
        ("post_processor",),
        ("model",),
        (),
    ],
    "tokenizer-config": [()],
}


@dataclass(frozen=True)
class Case:
    seed: int
    family: str
    what: str  # the mutation, in words
    outcome: str
    detail: str  # the error message, or what was wrong


def tensor_digests(path: Path) -> dict[str, tuple[str, tuple[int, ...], str]]:
    header = read_header(path)
    with open(path, "rb") as f:
        out = {}
        for t in header.tensors:
            f.seek(t.offset)
            out[t.name] = (t.type.name, t.shape, hashlib.sha256(f.read(t.n_bytes)).hexdigest())
    return out


# --- mutations ----------------------------------------------------------------------------------


def _random_value(rng: random.Random, original: Any) -> Any:
    near = []
    if isinstance(original, bool):
        near = [not original]
    elif isinstance(original, int):
        near = [original + 1, original - 1, original * 2, -original, str(original), float(original)]
    elif isinstance(original, str):
        near = [original[:-1], original + "x", original.upper(), original * 2, len(original)]
    elif isinstance(original, list):
        near = [original[:-1], original + original[-1:], list(reversed(original)), original[1:]]
    pool = [
        None,
        True,
        False,
        0,
        -1,
        1,
        7,
        2**31,
        2**32 + 5,
        2**63,
        -(2**63),
        1.5,
        -0.0,
        1e308,
        "",
        "x",
        "BF16",
        "<|im_end|>",
        [],
        [1],
        [-1, 2],
        ["a", "b"],
        {},
        {"a": 1},
        {"content": 3},
    ]
    return rng.choice(near + pool if near and rng.random() < 0.6 else pool)


def _walk(rng: random.Random, node: Any, path: tuple) -> tuple[Any, Any]:
    """A random (container, key) inside `node`, starting at `path` and descending up to three levels."""
    for key in path:
        if not isinstance(node, (dict, list)) or key not in (node if isinstance(node, dict) else range(len(node))):
            break
        node = node[key]
    parent, key = None, None
    for _ in range(rng.randint(1, 3)):
        if not isinstance(node, (dict, list)) or not node:
            break
        parent = node
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        node = node[key]
    return parent, key


def mutate_json(rng: random.Random, data: Any, roots: list[tuple]) -> tuple[Any, str]:
    data = copy.deepcopy(data)
    root = rng.choice(roots) if rng.random() < 0.5 else ()
    parent, key = _walk(rng, data, root)
    if parent is None:
        return _random_value(rng, data), "replaced the whole file's value"
    op = rng.choice(["set", "set", "set", "delete", "add"])
    if op == "delete":
        del parent[key]
        return data, f"deleted {key!r}"
    if op == "add" and isinstance(parent, dict):
        new = rng.choice(["x", str(key) + "_", "__metadata__", "dtype", "id"])
        parent[new] = _random_value(rng, None)
        return data, f"added key {new!r}"
    if op == "add":
        parent.insert(key, copy.deepcopy(parent[key]) if rng.random() < 0.5 else _random_value(rng, parent[key]))
        return data, f"inserted at [{key}]"
    old, parent[key] = parent[key], _random_value(rng, parent[key])
    return data, f"set {key!r} from {str(old)[:30]!r} to {str(parent[key])[:30]!r}"


def _split_safetensors(data: bytes) -> tuple[int, bytes, bytes]:
    n = int.from_bytes(data[:8], "little")
    return n, data[8 : 8 + n], data[8 + n :]


def mutate_safetensors(rng: random.Random, family: str, data: bytes) -> tuple[bytes, str]:
    n, header, body = _split_safetensors(data)
    if family == "st-length":
        delta = rng.choice([-16, -8, -2, -1, 1, 2, 8, 16, 2**20, -n, 2**40])
        return (n + delta).to_bytes(
            8, "little", signed=n + delta < 0
        ) + header + body, f"header length {n} -> {n + delta}"
    if family == "st-bytes":
        b = bytearray(header)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.choice([rng.randrange(256), ord(rng.choice('0123456789",:{}[] '))])
        return data[:8] + bytes(b) + body, "changed bytes in the header"
    if family == "st-size":
        cut = rng.choice([1, 2, 64, 4096, len(body) // 2])
        if rng.random() < 0.5:
            return data[: len(data) - cut], f"cut {cut} bytes off the end"
        return data + bytes(cut), f"appended {cut} bytes"
    parsed = json.loads(header)
    names = [k for k in parsed if k != "__metadata__"]
    roots = [(rng.choice(names),), ("__metadata__",), ()]
    damaged, what = mutate_json(rng, parsed, roots)
    text = json.dumps(damaged).encode()
    text += b" " * ((8 - len(text) % 8) % 8)  # keep the data aligned, as the library writes it
    return len(text).to_bytes(8, "little") + text + body, f"header JSON: {what}"


def damage(rng: random.Random, folder: Path, family: str) -> str:
    """Damage one file of `folder` in place (the file is replaced, never edited through a hard link)."""
    shards = sorted(folder.glob("*.safetensors"))
    if family.startswith("st-"):
        target = rng.choice(shards)
        data, what = mutate_safetensors(rng, family, target.read_bytes())
    else:
        target = (
            folder
            / {
                "config": "config.json",
                "index": "model.safetensors.index.json",
                "tokenizer": "tokenizer.json",
                "tokenizer-config": "tokenizer_config.json",
            }[family]
        )
        damaged, what = mutate_json(rng, json.loads(target.read_text(encoding="utf-8")), ROOTS[family])
        data = json.dumps(damaged, ensure_ascii=False).encode()
    target.unlink()
    target.write_bytes(data)
    return f"{target.name}: {what}"


# --- verdicts -----------------------------------------------------------------------------------


def linked_copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        os.link(f, dst / f.name)
    return dst


def _leftovers(*folders: Path, allowed: set[str]) -> list[str]:
    return [p.name for d in folders for p in d.iterdir() if p.name not in allowed]


def run_case(
    seed: int, family: str, good: Path, baseline: dict, workdir: Path, convert_fn: Callable[..., Any] = convert
) -> Case:
    rng = random.Random(seed)
    case_dir = workdir / f"case-{seed}"
    src, out = linked_copy(good, case_dir / good.name), case_dir / "out"
    out.mkdir()
    what = damage(rng, src, family)
    source_files = {p.name for p in src.iterdir()}
    try:
        result = convert_fn(src, preset="q8_0", outdir=out, threads=1)
    except MarcoGGUFError as e:
        left = _leftovers(out, src, allowed=source_files)
        return Case(seed, family, what, "leftover" if left else "refused", f"{e} {left if left else ''}".strip())
    except Exception as e:
        return Case(seed, family, what, "crash", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}")
    got = tensor_digests(result.path)
    diff = sorted(k for k in set(got) | set(baseline) if got.get(k) != baseline.get(k))
    return Case(seed, family, what, "wrong" if diff else "harmless", f"tensors differ: {diff[:3]}" if diff else "")
