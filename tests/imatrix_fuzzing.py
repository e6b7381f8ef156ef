"""Seeded damage to importance-matrix files of both formats, and the verdict on what the reader and its
consumer made of it.

Shared by tests/test_fuzz_imatrix.py (a few hundred cases) and benchmarks/fuzz_campaign.py imatrix
(thousands). Every case writes one damaged copy of a good imatrix made for the tiny test model, in
llama.cpp's GGUF format (`<name>.in_sum2` / `<name>.counts`) or its legacy .dat format (as
llama-imatrix's save_imatrix_legacy writes it), and reads it with `read_imatrix`, then matches it to
the model's tensors with `load_importance`, as `convert --imatrix` does. Outcomes:

- refused:  ImatrixError (or another MarcoGGUFError) in one line naming the file, from the reader or
            from the match against the model;
- accepted: read and matched, and every entry holds what an imatrix may hold (finite sums >= 0,
            whole counts >= 0, a vector per tensor of the tensor's size, finite and >= 0);
- invalid:  read, but the content breaks one of those rules;
- untidy:   refused, but the message is not one line naming the file;
- crash:    any other exception.
"""

from __future__ import annotations

import math
import random
import struct
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf_fuzzing import Doc, encode, m_kv_set, m_kv_type, m_kv_value, m_tensor_info

from marco_gguf.arch.qwen3moe import PlannedTensor
from marco_gguf.base.errors import MarcoGGUFError
from marco_gguf.gguf_io.reader import read_header
from marco_gguf.quant.imatrix_file import COUNT_SUFFIX, SUM_SUFFIX, Imatrix, read_imatrix
from marco_gguf.quant.importance import experts_of, load_importance

DAT_FAMILIES = ("dat-truncate", "dat-bits", "dat-int", "dat-values", "dat-name", "dat-length")
GGUF_FAMILIES = (
    "gguf-truncate",
    "gguf-bits",
    "gguf-kv",
    "gguf-tensor-info",
    "gguf-values",
    "gguf-name",
    "gguf-length",
)
FAMILIES = DAT_FAMILIES + GGUF_FAMILIES
OUTCOMES = ("refused", "accepted", "invalid", "untidy", "crash")
ODD_INTS = (0, -1, 1, 2, 1023, 1024, 2**31 - 1, -(2**31), 2**20, 12)
ODD_FLOATS = (math.nan, math.inf, -math.inf, -1.0, -0.0, 0.0, 3.4e38, 1e-45, 2.5, 1e30)
FOREIGN = ("blk.9.attn_q.weight", "output.weight", "blk.0.attn_q.bias", "blk.0.ffn_gate_exps", "", "x" * 70)


@dataclass(frozen=True)
class Case:
    seed: int
    family: str
    what: str
    outcome: str
    detail: str


# --- the two formats, as llama.cpp writes them -------------------------------------------------------


@dataclass
class DatEntry:
    name: bytes
    ncall: int
    values: np.ndarray  # float32, (sum / count) * ncall
    nval: int | None = None  # None: len(values); else the count written, whatever the values are
    name_len: int | None = None  # None: len(name); else the length written, whatever the name is


@dataclass
class Dat:
    entries: list[DatEntry]
    chunk_count: int
    dataset: bytes
    n_entries: int | None = None  # None: len(entries)
    dataset_len: int | None = None  # None: len(dataset)


def dat_of(imatrix: Imatrix, chunk_size: int) -> Dat:
    """llama-imatrix's save_imatrix_legacy of an imatrix held as raw sums and counts (the GGUF form): entries
    without any count are skipped, ncall is the ceiling of the largest count over the chunk size, and a matrix
    no token reached stores 1 * ncall."""
    entries = []
    for name in sorted(imatrix.entries):
        e = imatrix.entries[name]
        if not e.counts.any():
            continue
        ncall = int((int(e.counts.max()) + chunk_size - 1) // chunk_size)
        counts = np.repeat(e.counts.astype(np.float32), e.ne0)
        sums = e.sums.astype(np.float32)
        zero = counts == 0
        values = np.where(zero, np.float32(1), sums) / np.where(zero, np.float32(1), counts) * np.float32(ncall)
        entries.append(DatEntry(name.encode(), ncall, values.astype(np.float32)))
    return Dat(entries, imatrix.chunk_count, (imatrix.datasets or [""])[0].encode())


def encode_dat(dat: Dat) -> bytes:
    i32 = lambda v: struct.pack("<i", (v + 2**31) % 2**32 - 2**31)  # noqa: E731 - out-of-range edits wrap
    out = [i32(len(dat.entries) if dat.n_entries is None else dat.n_entries)]
    for e in dat.entries:
        nval = len(e.values) if e.nval is None else e.nval
        out += [
            i32(len(e.name) if e.name_len is None else e.name_len),
            e.name,
            i32(e.ncall),
            i32(nval),
            e.values.astype("<f4").tobytes(),
        ]
    out.append(i32(dat.chunk_count))
    out += [i32(len(dat.dataset) if dat.dataset_len is None else dat.dataset_len), dat.dataset]
    return b"".join(out)


class _Writer(gguf.GGUFWriter):
    def add_architecture(self) -> None:
        """llama-imatrix writes no general.architecture."""


def encode_gguf(path: Path, imatrix: Imatrix, arrays: dict[str, np.ndarray] | None = None) -> Path:
    """llama-imatrix's GGUF format; `arrays` (tensor name -> float32 array in numpy order) replaces the tensors
    made from the entries, so that a test can store sums and counts that disagree."""
    w = _Writer(path, arch="imatrix")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", list(imatrix.datasets))
    w.add_uint32("imatrix.chunk_count", imatrix.chunk_count)
    w.add_uint32("imatrix.chunk_size", imatrix.chunk_size)
    if arrays is None:
        arrays = {}
        for name in sorted(imatrix.entries):
            e = imatrix.entries[name]
            arrays[name + SUM_SUFFIX] = e.sums.astype(np.float32).reshape(e.n_mat, e.ne0)
            arrays[name + COUNT_SUFFIX] = e.counts.astype(np.float32).reshape(e.n_mat, 1)
    for name, a in arrays.items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_arrays(imatrix: Imatrix) -> dict[str, np.ndarray]:
    return {
        k: v
        for name in sorted(imatrix.entries)
        for k, v in (
            (name + SUM_SUFFIX, imatrix.entries[name].sums.astype(np.float32).reshape(imatrix.entries[name].n_mat, -1)),
            (name + COUNT_SUFFIX, imatrix.entries[name].counts.astype(np.float32).reshape(-1, 1)),
        )
    }


# --- mutations (each edits in place and says what it did) --------------------------------------------


def _dat_int(rng: random.Random, dat: Dat) -> str:
    e = rng.choice(dat.entries)
    field = rng.choice(("n_entries", "name length", "ncall", "nval", "chunk count", "dataset length"))
    value = rng.choice(ODD_INTS)
    if field == "n_entries":
        dat.n_entries = rng.choice((*ODD_INTS, len(dat.entries) + 1, len(dat.entries) - 1))
        return f"entry count {len(dat.entries)} -> {dat.n_entries}"
    if field == "name length":  # the length written, not the name: everything after it shifts
        e.name_len = rng.choice((*ODD_INTS, len(e.name) + 1, len(e.name) - 1))
        return f"{e.name!r} name length {len(e.name)} -> {e.name_len}"
    if field == "ncall":
        e.ncall = value
        return f"{e.name!r} ncall -> {value}"
    if field == "nval":
        e.nval = rng.choice((*ODD_INTS, len(e.values) + 1, len(e.values) - 1, len(e.values) * 2))
        return f"{e.name!r} nval {len(e.values)} -> {e.nval}"
    if field == "chunk count":
        dat.chunk_count = value
        return f"chunk count -> {value}"
    dat.dataset_len = value
    return f"dataset length {len(dat.dataset)} -> {value}"


def _dat_values(rng: random.Random, dat: Dat) -> str:
    e = rng.choice(dat.entries)
    e.values = e.values.copy()
    spots = [rng.randrange(len(e.values)) for _ in range(rng.randint(1, 3))]
    value = rng.choice(ODD_FLOATS)
    e.values[spots] = value
    return f"{e.name!r} values at {spots} -> {value}"


def _dat_name(rng: random.Random, dat: Dat) -> str:
    e = rng.choice(dat.entries)
    new = rng.choice(
        (*(n.encode() for n in FOREIGN), rng.choice(dat.entries).name, e.name + b"\xff", e.name[:5] + b"\0" + e.name)
    )
    old, e.name = e.name, new
    return f"entry {old!r} renamed {new[:40]!r}"


def _dat_length(rng: random.Random, dat: Dat) -> str:
    e = rng.choice(dat.entries)
    n = len(e.values)
    new = rng.choice((n - 1, n + 1, n // 2, n * 2, 1, n - 256))
    e.values = np.resize(e.values, max(1, new)).astype(np.float32)
    return f"{e.name!r} holds {len(e.values)} values instead of {n}"


def _bits(rng: random.Random, data: bytes, head: int) -> tuple[bytes, str]:
    """Flip 1 to 4 bits, half the time inside the first `head` bytes (the structure), else anywhere."""
    b = bytearray(data)
    spots = []
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(head if rng.random() < 0.5 else len(b))
        b[pos] ^= 1 << rng.randrange(8)
        spots.append(pos)
    return bytes(b), f"bits flipped at {spots}"


def damage_dat(rng: random.Random, good: Dat, family: str) -> tuple[bytes, str]:
    data = encode_dat(good)
    if family == "dat-truncate":
        cut = rng.randrange(len(data))
        return data[:cut], f"cut at byte {cut} of {len(data)}"
    if family == "dat-bits":
        return _bits(rng, data, 4 + 12 + len(good.entries[0].name))
    dat = Dat([DatEntry(e.name, e.ncall, e.values) for e in good.entries], good.chunk_count, good.dataset)
    what = {"dat-int": _dat_int, "dat-values": _dat_values, "dat-name": _dat_name, "dat-length": _dat_length}[family](
        rng, dat
    )
    return encode_dat(dat), what


def _gguf_values(rng: random.Random, arrays: dict[str, np.ndarray]) -> str:
    name = rng.choice(sorted(arrays))
    a = arrays[name] = arrays[name].copy()
    flat = a.reshape(-1)
    spots = [rng.randrange(len(flat)) for _ in range(rng.randint(1, 3))]
    value = rng.choice((*ODD_FLOATS, 2.0**63, -(2.0**63), 2.0**70))
    flat[spots] = value
    return f"{name} at {spots} -> {value}"


def _gguf_name(rng: random.Random, arrays: dict[str, np.ndarray]) -> str:
    old = rng.choice(sorted(arrays))
    suffix = SUM_SUFFIX if old.endswith(SUM_SUFFIX) else COUNT_SUFFIX
    base = rng.choice((*FOREIGN[:4], old.removesuffix(suffix) + "x", "blk.0.attn_q"))
    both = rng.random() < 0.5  # rename the pair (a whole foreign entry) or one half of it
    new = {}
    for k, v in arrays.items():
        if k == old or (both and k.removesuffix(SUM_SUFFIX).removesuffix(COUNT_SUFFIX) == old.removesuffix(suffix)):
            k = base + (SUM_SUFFIX if k.endswith(SUM_SUFFIX) else COUNT_SUFFIX)
        new[k] = v
    arrays.clear()
    arrays.update(new)
    return f"{'entry' if both else 'tensor'} {old} renamed {base}"


def _gguf_length(rng: random.Random, arrays: dict[str, np.ndarray]) -> str:
    name = rng.choice(sorted(n for n in arrays if n.endswith(SUM_SUFFIX)))
    counts = name.removesuffix(SUM_SUFFIX) + COUNT_SUFFIX
    s, c = arrays[name], arrays[counts]
    op = rng.choice(("narrower", "wider", "fewer counts", "more counts", "fewer matrices", "one row"))
    if op == "narrower":
        arrays[name] = np.ascontiguousarray(s[:, : max(1, s.shape[1] // 2)])
    elif op == "wider":
        arrays[name] = np.concatenate([s, s], axis=1)
    elif op == "fewer counts" and len(c) > 1:
        arrays[counts] = np.ascontiguousarray(c[:-1])
    elif op == "more counts":
        arrays[counts] = np.concatenate([c, c[:1]])
    elif op == "fewer matrices" and len(c) > 1:
        arrays[name], arrays[counts] = np.ascontiguousarray(s[: len(c) // 2]), np.ascontiguousarray(c[: len(c) // 2])
    else:  # the sums cut short by a few values, as one row
        arrays[name] = np.ascontiguousarray(s.reshape(-1)[: s.size - 3].reshape(1, -1))
    return f"{name} {op}: sums {arrays[name].shape}, counts {arrays[counts].shape}"


def damage_gguf(rng: random.Random, good: Imatrix, good_path: Path, work: Path, family: str) -> tuple[bytes, str]:
    data = good_path.read_bytes()
    if family == "gguf-truncate":
        cut = rng.randrange(len(data))
        return data[:cut], f"cut at byte {cut} of {len(data)}"
    if family == "gguf-bits":
        return _bits(rng, data, read_header(good_path).data_offset)
    if family in ("gguf-kv", "gguf-tensor-info"):
        doc = Doc.of(good_path)
        if family == "gguf-tensor-info":
            what = m_tensor_info(rng, doc)
            return encode(doc), what
        what = rng.choice((m_kv_value, m_kv_type, m_kv_set))(rng, doc)
        return encode(doc), what
    arrays = gguf_arrays(good)
    what = {"gguf-values": _gguf_values, "gguf-name": _gguf_name, "gguf-length": _gguf_length}[family](rng, arrays)
    scratch = work / "scratch.gguf"
    encode_gguf(scratch, good, arrays)
    out = scratch.read_bytes()
    scratch.unlink()
    return out, what


# --- verdicts -----------------------------------------------------------------------------------------


def imatrix_problems(imatrix: Imatrix) -> list[str]:
    """What a read imatrix holds that no imatrix may: no entries, non-finite or negative sums, counts that are not
    whole numbers >= 0, sums that do not split into one row per count, normalised vectors (`importance()`, what
    the quantizers get) that are not finite and >= 0 or not one value per sum."""
    bad = [] if imatrix.entries else ["no entries"]
    for name, e in imatrix.entries.items():
        if e.sums.ndim != 1 or len(e.sums) == 0 or e.n_mat == 0 or len(e.sums) != e.n_mat * e.ne0:
            bad.append(f"{name}: {len(e.sums)} sums for {e.n_mat} counts")
        elif not np.isfinite(e.sums).all() or (e.sums < 0).any():
            bad.append(f"{name}: sums not finite and >= 0")
        elif e.counts.dtype != np.int64 or (e.counts < 0).any():
            bad.append(f"{name}: counts {e.counts[:4]} not whole and >= 0")
        else:
            vec = imatrix.importance(name)
            if vec is None or vec.dtype != np.float32 or len(vec) != len(e.sums):
                bad.append(f"{name}: importance() gave {None if vec is None else (len(vec), vec.dtype)}")
            elif not np.isfinite(vec).all() or (vec < 0).any():
                bad.append(f"{name}: importance() not finite and >= 0")
    if imatrix.chunk_count < 0 or imatrix.chunk_size < 0 or not all(isinstance(d, str) for d in imatrix.datasets):
        bad.append(f"chunk count {imatrix.chunk_count}, chunk size {imatrix.chunk_size}, datasets {imatrix.datasets}")
    return bad


def vector_problems(vectors: dict[str, np.ndarray], planned: Sequence[PlannedTensor]) -> list[str]:
    """What a matched imatrix gives a tensor that it may not: a vector of another size than the tensor's
    row length x experts, or values that are not finite and >= 0."""
    by_name, bad = {t.name: t for t in planned}, []
    for name, vec in vectors.items():
        t = by_name[name]
        if vec.dtype != np.float32 or len(vec) != t.row_len * experts_of(t):
            bad.append(f"{name}: vector of {len(vec)} {vec.dtype} for {t.row_len} x {experts_of(t)}")
        elif not np.isfinite(vec).all() or (vec < 0).any():
            bad.append(f"{name}: vector not finite and >= 0")
    return bad


def _judged(path: Path, call: Callable[[], object]) -> tuple[str, str, object]:
    """(outcome, detail, result) of reading `path` one way: refused/untidy/crash, or "ok" with the result."""
    try:
        return "ok", "", call()
    except MarcoGGUFError as e:
        if "\n" in str(e) or str(path) not in e.message:
            return "untidy", repr(str(e)), None
        return "refused", str(e), None
    except Exception as e:
        return "crash", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}", None


def verdict(path: Path, planned: Sequence[PlannedTensor]) -> tuple[str, str]:
    """The reader alone first (its result must be a valid imatrix), then the match to the model's tensors, as
    `convert --imatrix` runs it."""
    outcome, detail, imatrix = _judged(path, lambda: read_imatrix(path))
    if outcome != "ok":
        return outcome, detail
    if problems := imatrix_problems(imatrix):  # type: ignore[arg-type]
        return "invalid", "read: " + "; ".join(problems[:3])
    outcome, detail, importance = _judged(path, lambda: load_importance(path, planned))
    if outcome != "ok":
        return outcome, detail
    problems = vector_problems(dict(importance.vectors), planned)  # type: ignore[attr-defined]
    return ("invalid", "matched: " + "; ".join(problems[:3])) if problems else ("accepted", "")


def run_case(
    seed: int,
    family: str,
    good: tuple[Imatrix, Dat, Path],
    planned: Sequence[PlannedTensor],
    workdir: Path,
    then: Callable[[Path, str], str | None] | None = None,
) -> Case:
    """One damaged file, judged; `then(path, outcome)` (say, a conversion with it) may add a problem."""
    rng = random.Random(seed)
    imatrix, dat, gguf_path = good
    if family in DAT_FAMILIES:
        data, what = damage_dat(rng, dat, family)
        path = workdir / f"case-{seed}.dat"
    else:
        data, what = damage_gguf(rng, imatrix, gguf_path, workdir, family)
        path = workdir / f"case-{seed}.imatrix.gguf"
    path.write_bytes(data)
    try:
        outcome, detail = verdict(path, planned)
        if then is not None and outcome in ("refused", "accepted") and (problem := then(path, outcome)):
            outcome, detail = "crash" if problem.startswith("crash") else "untidy", problem
        return Case(seed, family, what, outcome, detail)
    finally:
        path.unlink()
