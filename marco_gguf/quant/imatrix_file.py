"""Importance-matrix files as llama.cpp writes and reads them: GGUF (`general.type = imatrix`) and legacy `.dat`.

GGUF (tools/imatrix/imatrix.cpp save_imatrix): per weight `<name>.in_sum2`, F32 ne [ne0, n_mat] holding the
raw sums of squared activations, and `<name>.counts`, F32 ne [1, n_mat] holding the tokens behind each
matrix (one per expert for stacked experts); keys imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size.
Legacy .dat (save_imatrix_legacy): int32 entry count, then per entry name, ncall, nval and nval floats of
(sum / count) * ncall; then optionally the chunk count and the dataset name.
Normalisation for quantizing follows tools/quantize/quantize.cpp load_imatrix.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from marco_gguf.base.errors import GGUFFileError, ImatrixError
from marco_gguf.base.files import write_atomic
from marco_gguf.gguf_io.reader import Header, read_header

KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"
SUM_SUFFIX, COUNT_SUFFIX = ".in_sum2", ".counts"


@dataclass
class Entry:
    """One weight's statistics: flat sums (n_mat * ne0, matrix-major) and one count per matrix."""

    sums: np.ndarray  # float32, or float64 while collecting
    counts: np.ndarray  # int64

    @property
    def n_mat(self) -> int:
        return len(self.counts)

    @property
    def ne0(self) -> int:
        return len(self.sums) // max(1, len(self.counts))


@dataclass
class Imatrix:
    """An importance matrix in memory, whichever format it came from."""

    entries: dict[str, Entry]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False
    has_metadata: bool = True

    def importance(self, name: str) -> np.ndarray | None:
        """The float32 vector llama-quantize passes on for `name` (n_mat * ne0), or None without an entry.

        GGUF: sums / count per matrix, 1.0 where a matrix (an expert no token reached) has no count.
        Legacy: the stored (sum / count) * ncall divided by ncall."""
        e = self.entries.get(name)
        if e is None:
            return None
        sums = e.sums.astype(np.float32)
        if self.legacy:
            ncall = int(e.counts[0]) if len(e.counts) else 0
            return sums / np.float32(ncall) if ncall > 0 else sums
        per = sums.reshape(e.n_mat, e.ne0)
        counts = e.counts.astype(np.float32)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(counts > 0, per / np.where(counts > 0, counts, 1), np.float32(1))
        return out.astype(np.float32).reshape(-1)


class _ImatrixWriter(gguf.GGUFWriter):
    def add_architecture(self) -> None:
        """llama-imatrix writes no general.architecture; GGUFWriter's constructor would add one."""


def write_imatrix(imatrix: Imatrix, path: str | Path) -> Path:
    """Write llama.cpp's GGUF imatrix format (names sorted, as llama-imatrix does) atomically."""
    path = Path(path)

    def make(tmp: Path) -> None:
        w = _ImatrixWriter(tmp, arch="imatrix")
        w.add_type("imatrix")
        w.add_array(KEY_DATASETS, list(imatrix.datasets))
        w.add_uint32(KEY_CHUNK_COUNT, imatrix.chunk_count)
        w.add_uint32(KEY_CHUNK_SIZE, imatrix.chunk_size)
        for name in sorted(imatrix.entries):
            e = imatrix.entries[name]
            if e.n_mat == 0 or len(e.sums) == 0:
                continue
            w.add_tensor(name + SUM_SUFFIX, e.sums.astype(np.float32).reshape(e.n_mat, e.ne0))
            w.add_tensor(name + COUNT_SUFFIX, e.counts.astype(np.float32).reshape(e.n_mat, 1))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    try:
        write_atomic(path, make)
    except OSError as e:
        raise ImatrixError(
            f"{path}: cannot write the imatrix ({e.strerror})", "check the folder and free space"
        ) from None
    return path


def read_imatrix(path: str | Path) -> Imatrix:
    """Read a GGUF or legacy .dat imatrix; damaged or foreign files raise ImatrixError naming the problem.

    Beyond what llama.cpp's common_imatrix_load checks, values no imatrix holds are refused, not passed on:
    sums that are negative or not finite, counts that are not whole numbers of tokens, sums that do not split
    into one row per count, names that are not printable text, negative call or chunk counts."""
    path = Path(path)
    try:
        head = path.read_bytes()[:4]
    except OSError as e:
        raise ImatrixError(f"{path}: cannot read the imatrix ({e.strerror})") from None
    if head == b"GGUF":
        return _read_gguf(path)
    return _read_legacy(path)


AGAIN = "make it again with `marco-gguf imatrix`, or download it again"
MAX_COUNT = 2**53  # counts are whole numbers of tokens stored as F32; larger ones are damage, not data


def _show(name: str) -> str:
    """A name as it can stand in a one-line message."""
    return name if name.isprintable() else repr(name)


def _check_sums(path: Path, what: str, sums: np.ndarray) -> None:
    if not np.isfinite(sums).all():
        raise ImatrixError(f"{path}: {what} holds a value that is not finite (NaN or infinity)", AGAIN)
    if (sums < 0).any():
        raise ImatrixError(f"{path}: {what} holds a negative value: sums of squares are >= 0", AGAIN)


def _read_gguf(path: Path) -> Imatrix:
    try:
        header = read_header(path)  # strict and bounded: every length checked against the file first
    except GGUFFileError as e:
        detail = e.message.removeprefix(f"{path}: ")
        raise ImatrixError(f"{path}: truncated or damaged GGUF imatrix: {detail}", AGAIN) from None
    fields = header.fields
    if fields.get("general.type") not in (None, "imatrix") or not any(
        t.name.endswith(SUM_SUFFIX) for t in header.tensors
    ):
        raise ImatrixError(
            f"{path}: not an imatrix (general.type {fields.get('general.type')!r}, "
            f"{len(header.tensors)} tensors, none named *{SUM_SUFFIX})",
            "give the .imatrix.gguf file",
        )
    _check_keys(path, header)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    with open(path, "rb") as f:
        for t in header.tensors:
            suffix = next((s for s in (SUM_SUFFIX, COUNT_SUFFIX) if t.name.endswith(s)), None)
            if suffix is None:
                continue
            if t.type != gguf.GGMLQuantizationType.F32:
                raise ImatrixError(f"{path}: {_show(t.name)} is {t.type.name}, llama.cpp's format is F32")
            f.seek(t.offset)
            pairs.setdefault(t.name.removesuffix(suffix), {})[suffix] = np.frombuffer(f.read(t.n_bytes), "<f4")
    entries = {name: _gguf_entry(path, name, p) for name, p in pairs.items()}
    return Imatrix(
        entries,
        list(fields.get(KEY_DATASETS, [])),
        int(fields.get(KEY_CHUNK_COUNT, 0)),
        int(fields.get(KEY_CHUNK_SIZE, 0)),
        legacy=False,
        has_metadata=all(k in fields for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE)),
    )


def _check_keys(path: Path, header: Header) -> None:
    """The imatrix keys have the types llama.cpp reads them as (gguf_get_val_u32 asserts on another type)."""
    for key in (KEY_CHUNK_COUNT, KEY_CHUNK_SIZE):
        if key in header.types and header.types[key] != gguf.GGUFValueType.UINT32:
            raise ImatrixError(f"{path}: key {key} is {header.types[key].name}, llama.cpp reads it as UINT32", AGAIN)
    if KEY_DATASETS in header.types and (
        header.types[KEY_DATASETS] != gguf.GGUFValueType.ARRAY
        or header.item_types.get(KEY_DATASETS) != gguf.GGUFValueType.STRING
    ):
        raise ImatrixError(f"{path}: key {KEY_DATASETS} is not an array of strings", AGAIN)


def _gguf_entry(path: Path, name: str, pair: dict[str, np.ndarray]) -> Entry:
    if len(pair) != 2:
        have = "sums" if SUM_SUFFIX in pair else "counts"
        raise ImatrixError(f"{path}: {_show(name)} has {have} but not the other", AGAIN)
    sums, counts = pair[SUM_SUFFIX].astype(np.float32), pair[COUNT_SUFFIX]
    if len(counts) == 0 or len(sums) == 0 or len(sums) % len(counts):
        raise ImatrixError(
            f"{path}: {_show(name)} has {len(sums):,} sums for {len(counts):,} counts: "
            "expected the same number of sums for each count",
            AGAIN,
        )
    _check_sums(path, _show(name + SUM_SUFFIX), sums)
    if not (np.isfinite(counts).all() and (counts >= 0).all() and (counts <= MAX_COUNT).all()):
        bad = counts[~(np.isfinite(counts) & (counts >= 0) & (counts <= MAX_COUNT))][0]
        raise ImatrixError(
            f"{path}: {_show(name + COUNT_SUFFIX)} holds {bad}: counts are whole numbers of tokens, 0 to 2**53",
            AGAIN,
        )
    # std::lround, as common_imatrix_load rounds them (half away from zero; counts are >= 0 here)
    return Entry(sums, np.floor(counts.astype(np.float64) + 0.5).astype(np.int64))


class _Cursor:
    def __init__(self, path: Path, data: bytes) -> None:
        self.path, self.data, self.pos = path, data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise ImatrixError(
                f"{self.path}: truncated imatrix: {what} needs {n} bytes at offset {self.pos}, "
                f"the file has {len(self.data)}",
                "make it again or download it again",
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def i32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]


def _read_legacy(path: Path) -> Imatrix:
    cur = _Cursor(path, path.read_bytes())
    n_entries = cur.i32("the entry count")
    if n_entries < 1 or n_entries > len(cur.data) // 12:
        raise ImatrixError(
            f"{path}: neither a GGUF nor a legacy .dat imatrix (entry count {n_entries})",
            "give a file written by llama-imatrix or marco-gguf imatrix",
        )
    entries = {}
    for i in range(n_entries):
        name = _legacy_name(cur, i)
        ncall, nval = cur.i32(f"{name}'s call count"), cur.i32(f"{name}'s value count")
        if nval < 1:
            raise ImatrixError(f"{path}: {name} has {nval} values")
        if ncall < 0:
            raise ImatrixError(f"{path}: {name} has a call count of {ncall}: llama-imatrix writes 1 or more", AGAIN)
        sums = np.frombuffer(cur.take(4 * nval, f"{name}'s {nval} values"), dtype="<f4").astype(np.float32)
        _check_sums(path, name, sums)
        entries[name] = Entry(sums, np.array([ncall], dtype=np.int64))
    chunk_count, datasets = 0, []
    if cur.pos < len(cur.data):  # optional trailer: chunk count, dataset name
        chunk_count = cur.i32("the chunk count")
        if chunk_count < 0:
            raise ImatrixError(f"{path}: the trailer holds a chunk count of {chunk_count}", AGAIN)
        if cur.pos + 4 <= len(cur.data):
            n = cur.i32("the dataset name length")
            if n > 0:
                datasets.append(cur.take(n, "the dataset name").decode("utf-8", errors="replace"))
    return Imatrix(entries, datasets, chunk_count, 0, legacy=True)


def _legacy_name(cur: _Cursor, i: int) -> str:
    n = cur.i32(f"entry {i + 1}'s name length")
    if not 0 < n < 1024:
        raise ImatrixError(f"{cur.path}: entry {i + 1} has a name length of {n}: not a legacy imatrix")
    raw = cur.take(n, f"entry {i + 1}'s name")
    name = raw.decode("utf-8", errors="replace")
    if "\ufffd" in name or not name.isprintable():  # not UTF-8, control bytes, NUL: the length or bytes are damaged
        raise ImatrixError(
            f"{cur.path}: entry {i + 1}'s name {raw[:60]!r} is not a tensor name: the file is damaged", AGAIN
        )
    return name
