"""Seeded damage to a good GGUF, and the verdict on what `read_info` and llama.cpp made of it.

Shared by tests/test_fuzz_gguf.py (a few hundred cases) and benchmarks/fuzz_campaign.py gguf
(thousands). Every case writes one damaged copy of a small qwen3moe GGUF: raw bytes of the header
flipped or the file cut short, or the header decoded, edited (a value, a type, a key dropped or
repeated, a tensor's shape, type, offset or name, the token list) and encoded again in front of the
original tensor data. Outcomes:

- refused:  `read_info` (through `check_model`, as chat runs it) raised GGUFFileError, the one line
            `inspect` prints;
- loaded:   `read_info` accepted it, and llama.cpp loaded it and decoded a prompt in a child process;
- llama-refused: accepted by us, then refused by llama.cpp with an error (typed for the user, but we
            should have said it first);
- crash:    `read_info` raised anything else, or the child died from a signal (llama.cpp aborted).
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
from gguf import GGUFValueType as V

from marco_gguf.base.errors import GGUFFileError
from marco_gguf.gguf_io.reader import FORMATS, Header, read_header
from marco_gguf.llama.loader import check_model

FAMILIES = ("bytes", "truncate", "kv-value", "kv-type", "kv-set", "tensor-info", "tokens")
OUTCOMES = ("refused", "loaded", "llama-refused", "crash")
INTERESTING_INTS = (0, 1, 2, 3, 7, 8, 63, 64, 255, 511, 512, 513, 1023, 1024, 1025, 2**31 - 1, 2**31, 2**32 - 1)
INTERESTING_FLOATS = (0.0, -1.0, 1e-30, 1e30, float("inf"), float("-inf"), float("nan"), 3.4e38)


@dataclass(frozen=True)
class Case:
    seed: int
    family: str
    what: str
    outcome: str
    detail: str


@dataclass
class Doc:
    """A decoded header, editable: kvs are [key, type, item type, value]; tensors [name, ggml dims, type, offset]."""

    version: int
    kvs: list[list[Any]]
    tensors: list[list[Any]]
    align: int
    data: bytes

    @classmethod
    def of(cls, path: Path) -> Doc:
        h: Header = read_header(path)
        raw = path.read_bytes()
        kvs = [[k, h.types[k], h.item_types.get(k), v] for k, v in h.fields.items()]
        tensors = [[t.name, list(reversed(t.shape)), int(t.type), t.offset - h.data_offset] for t in h.tensors]
        return cls(
            h.version,
            kvs,
            tensors,
            h.fields.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT),
            raw[h.data_offset :],
        )


def _value(vtype: V, value: Any) -> bytes:
    if vtype == V.STRING:
        b = value if isinstance(value, bytes) else str(value).encode()
        return struct.pack("<Q", len(b)) + b
    fmt = FORMATS[vtype]
    if fmt in "fd":
        return struct.pack("<" + fmt, float(value))
    if fmt == "?":
        return struct.pack("<B", int(value) & 0xFF)
    bits = struct.calcsize(fmt) * 8
    wrapped = int(value) % 2**bits  # out-of-range edits wrap, as a bit flip would
    if fmt.islower():  # signed formats
        wrapped -= 2**bits if wrapped >= 2 ** (bits - 1) else 0
    return struct.pack("<" + fmt, wrapped)


def encode(doc: Doc) -> bytes:
    """The GGUF bytes of `doc`: header, padding to the alignment, then the original tensor data."""
    out = [struct.pack("<IIQQ", gguf.GGUF_MAGIC, doc.version, len(doc.tensors), len(doc.kvs))]
    for key, vtype, item, value in doc.kvs:
        out += [_value(V.STRING, key), struct.pack("<I", int(vtype))]
        if vtype == V.ARRAY:
            out.append(struct.pack("<IQ", int(item), len(value)))
            out += [_value(item, v) for v in value]
        else:
            out.append(_value(vtype, value))
    for name, dims, qtype, offset in doc.tensors:
        out += [_value(V.STRING, name), struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, qtype, offset)]
    head = b"".join(out)
    return head + b"\0" * ((doc.align - len(head) % doc.align) % doc.align) + doc.data


# --- mutations (each returns what it did, in words) ------------------------------------------------


def _kv(rng: random.Random, doc: Doc) -> list[Any]:
    return rng.choice(doc.kvs)


def _new_scalar(rng: random.Random, vtype: V, old: Any) -> Any:
    if vtype in (V.FLOAT32, V.FLOAT64):
        return rng.choice(INTERESTING_FLOATS + (old * 2, -old))
    if vtype == V.BOOL:
        return rng.choice((0, 1, 2, 255))
    if vtype == V.STRING:
        return rng.choice(("", "x", "none", "yarn", "llama", "qwen2", "gpt2", old[:-1] if old else "z", old * 2))
    return rng.choice(INTERESTING_INTS + (old + 1, old - 1, old * 2, old // 2))


def m_kv_value(rng: random.Random, doc: Doc) -> str:
    kv = _kv(rng, doc)
    key, vtype, item, value = kv
    if vtype != V.ARRAY:
        kv[3] = _new_scalar(rng, vtype, value)
        return f"{key} = {kv[3]!r:.60}"
    value = list(value)
    op = rng.choice(("shorten", "extend", "dup", "edit", "empty"))
    if op == "shorten" and value:
        del value[rng.randrange(len(value)) :]
    elif op == "extend":
        value += value[: rng.randint(1, 3)] or [_new_scalar(rng, item, 0 if item != V.STRING else "")]
    elif op == "dup" and len(value) > 1:
        i, j = rng.sample(range(len(value)), 2)
        value[j] = value[i]
    elif op == "edit" and value:
        i = rng.randrange(len(value))
        value[i] = _new_scalar(rng, item, value[i])
    else:
        value = []
    kv[3] = value
    return f"{key} array {op} (now {len(value)})"


def m_kv_type(rng: random.Random, doc: Doc) -> str:
    kv = _kv(rng, doc)
    key, vtype, item, value = kv
    if vtype == V.ARRAY and rng.random() < 0.5:
        kv[2] = rng.choice([t for t in V if t not in (V.ARRAY, item)])
        kv[3] = [0 if kv[2] != V.STRING else "0"] * len(value) if kv[2] != V.STRING or item != V.STRING else value
        if item == V.STRING and kv[2] != V.STRING:
            kv[3] = [0] * len(value)
        elif item != V.STRING and kv[2] == V.STRING:
            kv[3] = [str(v) for v in value]
        return f"{key} items {item.name} -> {kv[2].name}"
    new = rng.choice([t for t in V if t not in (V.ARRAY, vtype)])
    kv[1], kv[2] = new, None
    if new == V.STRING:
        kv[3] = str(value)[:40]
    elif vtype in (V.STRING, V.ARRAY):
        kv[3] = len(value)
    return f"{key} type {vtype.name} -> {new.name}"


def m_kv_set(rng: random.Random, doc: Doc) -> str:
    i = rng.randrange(len(doc.kvs))
    op = rng.choice(("drop", "dup", "rename", "empty-key"))
    if op == "drop":
        return f"drop key {doc.kvs.pop(i)[0]}"
    if op == "dup":
        doc.kvs.insert(rng.randrange(len(doc.kvs) + 1), list(doc.kvs[i]))
        return f"repeat key {doc.kvs[i][0]}"
    old = doc.kvs[i][0]
    doc.kvs[i][0] = "" if op == "empty-key" else old.replace("qwen3moe", "qwen3") if "qwen3moe" in old else old + "x"
    return f"rename key {old} -> {doc.kvs[i][0]!r}"


def m_tensor_info(rng: random.Random, doc: Doc) -> str:
    t = rng.choice(doc.tensors)
    op = rng.choice(("dim", "swap", "ndims", "type", "offset", "name", "dup-name", "drop"))
    if op == "dim":
        j = rng.randrange(len(t[1]))
        t[1][j] = rng.choice((0, 1, t[1][j] + 1, t[1][j] - 1, t[1][j] * 2, 2**62, 2**63 + 1))
    elif op == "swap" and len(t[1]) > 1:
        t[1] = list(reversed(t[1]))
    elif op == "ndims":
        t[1] = t[1] + [1] if rng.random() < 0.5 else t[1][:-1]
    elif op == "type":
        t[2] = rng.choice(list(range(45)))
    elif op == "offset":
        t[3] = rng.choice((0, t[3] + doc.align, max(0, t[3] - doc.align), t[3] + 1, 2**40))
    elif op == "name":
        t[0] = rng.choice(("", "x" * 64, t[0].replace("blk.0", "blk.9"), t[0] + "x"))
    elif op == "dup-name":
        t[0] = rng.choice(doc.tensors)[0]
    else:
        doc.tensors.remove(t)
    return f"tensor {t[0]!r:.40} {op} -> dims {t[1]} type {t[2]} offset {t[3]}"


def m_tokens(rng: random.Random, doc: Doc) -> str:
    kv = next(k for k in doc.kvs if k[0] == "tokenizer.ggml.tokens")
    toks = list(kv[3])
    i, j = rng.randrange(len(toks)), rng.randrange(len(toks))
    op = rng.choice(("dup", "empty", "bad-utf8", "drop-last", "ids"))
    if op == "dup":
        toks[j] = toks[i]
    elif op == "empty":
        toks[i] = ""
    elif op == "bad-utf8":
        toks[i] = toks[i].encode()[:1] + b"\xff\xfe"
    elif op == "drop-last":
        toks.pop()
    else:
        key = rng.choice([k for k in doc.kvs if k[0].endswith("_token_id")] or [kv])
        if key is not kv:
            key[3] = rng.choice((len(toks), len(toks) - 1, 2**32 - 1, 0))
            return f"{key[0]} = {key[3]}"
    kv[3] = toks
    return f"tokens {op} at {i}"


def damage(rng: random.Random, good: bytes, doc_path: Path, family: str) -> tuple[bytes, str]:
    if family == "bytes":
        head = read_header(doc_path).data_offset
        data = bytearray(good)
        spots = [rng.randrange(head) for _ in range(rng.randint(1, 4))]
        for s in spots:
            data[s] = rng.randrange(256)
        return bytes(data), f"bytes changed at {spots}"
    if family == "truncate":
        cut = rng.randrange(len(good))
        return good[:cut], f"cut at byte {cut} of {len(good)}"
    doc = Doc.of(doc_path)
    what = {
        "kv-value": m_kv_value,
        "kv-type": m_kv_type,
        "kv-set": m_kv_set,
        "tensor-info": m_tensor_info,
        "tokens": m_tokens,
    }[family](rng, doc)
    return encode(doc), what


# --- the child that loads accepted files -----------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    from marco_gguf.base.errors import MarcoGGUFError
    from marco_gguf.llama.loader import load_model
    for line in sys.stdin:
        try:
            llm = load_model(line.strip(), n_ctx=64, threads=1)
            llm.eval(llm.tokenize(b"Hello, world\\n", add_bos=False, special=True))
            llm.detokenize(list(range(min(llm.n_vocab(), 300))))
            llm.close()
            print("@@ loaded", flush=True)
        except MarcoGGUFError as e:
            print("@@ llama-refused " + str(e).replace(chr(10), " "), flush=True)
        except Exception as e:
            print("@@ crash " + type(e).__name__ + ": " + str(e).replace(chr(10), " "), flush=True)
""")


class Loader:
    """A child Python that loads one file per request; if llama.cpp kills it, that file is the crash."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        env.pop("MARCO_GGUF_DEBUG", None)
        env["GGML_NO_BACKTRACE"] = "1"  # an abort should just end the child, not attach gdb to it
        return subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )

    def load(self, path: Path) -> tuple[str, str]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        while line and not line.startswith("@@ "):  # anything else is llama.cpp talking on stdout
            line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            return "crash", f"llama.cpp killed the process (exit {code})"
        outcome, _, detail = line[3:].strip().partition(" ")
        return outcome, detail

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=30)


def run_case(seed: int, family: str, good_path: Path, good: bytes, loader: Loader, workdir: Path) -> Case:
    rng = random.Random(seed)
    data, what = damage(rng, good, good_path, family)
    path = workdir / f"case-{seed}.gguf"
    path.write_bytes(data)
    try:
        try:
            check_model(path, ctx=64)  # what chat, bench and serve run before loading
        except GGUFFileError as e:
            return Case(seed, family, what, "refused", str(e))
        except Exception as e:
            return Case(seed, family, what, "crash", f"{type(e).__name__}: {e}")
        outcome, detail = loader.load(path)
        return Case(seed, family, what, outcome, detail)
    finally:
        path.unlink()
