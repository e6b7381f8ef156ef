"""Streaming, atomic GGUF v3 writer.

Tensor sizes are known before any data is produced, so the header, metadata and tensor table are
written first and each tensor's bytes are then streamed in order. Everything goes to a hidden
temporary file beside the target, which is linked into place only when complete: an error,
a full disk or Ctrl-C leaves no `.gguf` behind. A small state machine refuses out-of-order calls.

The header is encoded here rather than by gguf-py's GGUFWriter because its exact size must be known
before the first byte is written (the disk-space check and the data offsets), and GGUFWriter writes
headers only into a file it opens itself; the values and their types still come from gguf-py's
setters (metadata.KVCollector), and the byte-identity tests hold the result to llama.cpp's converter.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from marco_gguf.base.errors import OutputError
from marco_gguf.base.files import check_space, check_writable, make_folders, publish, remove_folders
from marco_gguf.gguf_io.format import ALIGNMENT, SCALAR_FORMATS, row_size


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's table entry: GGUF name, numpy-order shape and GGML type."""

    name: str
    shape: tuple[int, ...]
    type: Q

    @property
    def n_bytes(self) -> int:
        n_rows = 1
        for d in self.shape[:-1]:
            n_rows *= d
        return n_rows * row_size(self.type, self.shape[-1])


def _pad(n: int) -> int:
    return (ALIGNMENT - n % ALIGNMENT) % ALIGNMENT


def _string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def pack_value(value: Any, vtype: V, sub_type: V | None = None) -> bytes:
    """Encode one metadata value (without its type tag) in little-endian GGUF."""
    if vtype in SCALAR_FORMATS:
        return struct.pack("<" + SCALAR_FORMATS[vtype], value)
    if vtype == V.STRING:
        return _string(value)
    if vtype == V.ARRAY:
        items = list(value)
        if not items:
            raise ValueError("GGUF arrays must not be empty")
        item_type = sub_type or V.get_type(items[0])
        if item_type in SCALAR_FORMATS:
            body = struct.pack(f"<{len(items)}{SCALAR_FORMATS[item_type]}", *items)
        else:
            body = b"".join(pack_value(i, item_type) for i in items)
        return struct.pack("<IQ", item_type, len(items)) + body
    raise ValueError(f"unsupported GGUF value type {vtype!r}")


def encode_header(kv: Mapping[str, Any], tensors: list[TensorSpec]) -> bytes:
    """Header, metadata and tensor table, padded so the first tensor starts aligned."""
    out = bytearray(struct.pack("<IIQQ", gguf.GGUF_MAGIC, gguf.GGUF_VERSION, len(tensors), len(kv)))
    for key, val in kv.items():
        out += _string(key) + struct.pack("<I", val.type) + pack_value(val.value, val.type, val.sub_type)
    offset = 0
    for t in tensors:
        dims = tuple(reversed(t.shape))  # ggml's ne order: innermost first
        out += _string(t.name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, t.type, offset)
        offset += t.n_bytes + _pad(t.n_bytes)
    return bytes(out + b"\0" * _pad(len(out)))


def _disk_error(e: OSError, path: Path, needed: int, option: str) -> OutputError:
    if e.errno == errno.ENOSPC:
        free = shutil.disk_usage(path.parent).free
        return OutputError(
            f"{path}: disk full ({needed:,} bytes needed, {free:,} free); nothing was written",
            f"free space or choose another {option}",
        )
    return OutputError(f"{path}: cannot write ({e.strerror})", "check the folder's permissions and free space")


class GGUFStreamWriter:
    """Write a GGUF whose tensor table is fixed up front; `write()` streams the current tensor's bytes."""

    def __init__(
        self,
        path: Path,
        kv: Mapping[str, Any],
        tensors: list[TensorSpec],
        *,
        overwrite: bool = False,
        option: str = "--outdir",  # the command's option that places the output, named in the hints
    ) -> None:
        self.path, self.kv, self.tensors, self.overwrite, self.option = Path(path), kv, tensors, overwrite, option
        self.header = encode_header(kv, tensors)
        self.total_bytes = len(self.header) + sum(t.n_bytes + _pad(t.n_bytes) for t in tensors)
        self._state, self._index, self._written = "new", 0, 0
        self._file: Any = None
        self._made: list[Path] = []

    def __enter__(self) -> GGUFStreamWriter:
        self.open()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None or self._state != "done":
            self.abort()

    def open(self) -> None:
        self._expect("new")
        check_output(self.path, self.overwrite, self.total_bytes, self.option)
        try:
            self._made = make_folders(self.path.parent)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent)
            self._file, self._tmp = os.fdopen(fd, "wb", buffering=0), Path(tmp)
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the result normal permissions
            self._state = "tensors"
            self._raw_write(self.header)
        except OSError as e:
            self.abort()
            raise _disk_error(e, self.path, self.total_bytes, self.option) from None

    def write(self, data: Any) -> None:
        """Append bytes of the current tensor; crossing into the next tensor is refused."""
        self._expect("tensors")
        spec = self.tensors[self._index]
        n = memoryview(data).nbytes
        if self._written + n > spec.n_bytes:
            raise OutputError(f"internal error: {spec.name} got {self._written + n} bytes, expected {spec.n_bytes}")
        self._raw_write(data)
        self._written += n
        if self._written == spec.n_bytes:
            self._raw_write(b"\0" * _pad(spec.n_bytes))
            self._index, self._written = self._index + 1, 0

    @property
    def current(self) -> TensorSpec | None:
        return self.tensors[self._index] if self._state == "tensors" and self._index < len(self.tensors) else None

    def commit(self) -> Path:
        """Flush, then move the finished file into place (never clobbering unless overwrite)."""
        self._expect("tensors")
        if self._index != len(self.tensors):
            raise OutputError(f"internal error: commit after {self._index} of {len(self.tensors)} tensors")
        try:
            os.fsync(self._file.fileno())
            self._file.close()
            publish(self._tmp, self.path, overwrite=self.overwrite)
        except FileExistsError:
            self.abort()
            raise OutputError(f"{self.path}: already exists", "pass --force to overwrite it") from None
        except OSError as e:
            self.abort()
            raise _disk_error(e, self.path, self.total_bytes, self.option) from None
        self._state = "done"
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file; safe to call more than once."""
        if self._file is not None and not self._file.closed:
            self._file.close()
        tmp = getattr(self, "_tmp", None)
        if tmp is not None and tmp.exists():
            tmp.unlink()
        if self._state != "done":
            self._state = "aborted"
            remove_folders(self._made)

    def _raw_write(self, data: Any) -> None:
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[self._file.write(view) :]
        except OSError as e:
            self.abort()
            raise _disk_error(e, self.path, self.total_bytes, self.option) from None

    def _expect(self, state: str) -> None:
        if self._state != state:
            raise OutputError(f"internal error: GGUF writer is '{self._state}', operation needs '{state}'")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(path: Path, overwrite: bool, size: int, option: str = "--outdir") -> None:
    """Refuse early: an existing file without overwrite, an unwritable folder, too little space. A missing
    folder is fine: it is created when writing starts."""
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists", f"pass --force to overwrite it, or choose another {option}")
    folder = check_writable(path, hint=f"choose another {option}")
    check_space(folder, size, target=path, hint=f"free space or choose another {option}")
