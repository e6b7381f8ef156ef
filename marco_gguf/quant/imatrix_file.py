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

from marco_gguf.base.errors import ImatrixError
from marco_gguf.base.files import write_atomic

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
    """Read a GGUF or legacy .dat imatrix; damaged or foreign files raise ImatrixError naming the problem."""
    path = Path(path)
    try:
        head = path.read_bytes()[:4]
    except OSError as e:
        raise ImatrixError(f"{path}: cannot read the imatrix ({e.strerror})") from None
    if head == b"GGUF":
        return _read_gguf(path)
    return _read_legacy(path)


def _read_gguf(path: Path) -> Imatrix:
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:
        raise ImatrixError(
            f"{path}: truncated or damaged GGUF imatrix ({type(e).__name__}: {e})",
            "make it again with `marco-gguf imatrix`",
        ) from None
    fields = {k: f.contents() for k, f in reader.fields.items()}
    if fields.get("general.type") not in (None, "imatrix") or not any(
        t.name.endswith(SUM_SUFFIX) for t in reader.tensors
    ):
        raise ImatrixError(
            f"{path}: not an imatrix (general.type {fields.get('general.type')!r}, "
            f"{len(reader.tensors)} tensors, none named *{SUM_SUFFIX})",
            "give the .imatrix.gguf file",
        )
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for t in reader.tensors:
        for suffix in (SUM_SUFFIX, COUNT_SUFFIX):
            if t.name.endswith(suffix):
                if t.tensor_type != gguf.GGMLQuantizationType.F32:
                    raise ImatrixError(f"{path}: {t.name} is {t.tensor_type.name}, llama.cpp's format is F32")
                pairs.setdefault(t.name.removesuffix(suffix), {})[suffix] = np.array(t.data, dtype=np.float32).reshape(
                    -1
                )
    entries = {}
    for name, p in pairs.items():
        if len(p) != 2:
            raise ImatrixError(f"{path}: {name} has {'sums' if SUM_SUFFIX in p else 'counts'} but not the other")
        entries[name] = Entry(p[SUM_SUFFIX], np.rint(p[COUNT_SUFFIX]).astype(np.int64))
    datasets = fields.get(KEY_DATASETS) or []
    return Imatrix(
        entries,
        list(datasets),
        int(fields.get(KEY_CHUNK_COUNT) or 0),
        int(fields.get(KEY_CHUNK_SIZE) or 0),
        legacy=False,
        has_metadata=all(k in fields for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE)),
    )


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
        n = cur.i32(f"entry {i + 1}'s name length")
        if not 0 < n < 1024:
            raise ImatrixError(f"{path}: entry {i + 1} has a name length of {n}: not a legacy imatrix")
        name = cur.take(n, f"entry {i + 1}'s name").decode("utf-8", errors="replace")
        ncall, nval = cur.i32(f"{name}'s call count"), cur.i32(f"{name}'s value count")
        if nval < 1:
            raise ImatrixError(f"{path}: {name} has {nval} values")
        sums = np.frombuffer(cur.take(4 * nval, f"{name}'s {nval} values"), dtype="<f4").astype(np.float32)
        entries[name] = Entry(sums, np.array([ncall], dtype=np.int64))
    chunk_count, datasets = 0, []
    if cur.pos < len(cur.data):  # optional trailer: chunk count, dataset name
        chunk_count = cur.i32("the chunk count")
        if cur.pos + 4 <= len(cur.data):
            n = cur.i32("the dataset name length")
            if n > 0:
                datasets.append(cur.take(n, "the dataset name").decode("utf-8", errors="replace"))
    return Imatrix(entries, datasets, chunk_count, 0, legacy=True)
