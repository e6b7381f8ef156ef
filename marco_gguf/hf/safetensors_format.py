"""The safetensors format, read with the same checks as the `safetensors` library itself.

Layout (the format's spec, huggingface/safetensors README): an 8-byte little-endian header length N,
N bytes of UTF-8 JSON (an object, possibly padded with spaces), then the data section. The checks
follow the library's Rust `read_metadata` and `Metadata::validate`: N within the file, a JSON object
starting with '{', `__metadata__` a string-to-string map, every entry a known dtype, a shape of
non-negative integers and `data_offsets` [begin, end] whose length is the shape's size, entries
contiguous from 0 without overlap and the data section covered exactly ("fully covered").
We also refuse a name that appears twice in one header (the library keeps the last silently).

A hand-written reader and writer stay (rather than `safetensors.safe_open` / `save_file`) because
conversion reads row blocks with `os.preadv` into fresh buffers and `synth` streams tensors in chunks,
so memory stays bounded for a 35 GB checkpoint (the library's writer needs every tensor in memory);
the library, which transformers brings to the tests, is the reference the fuzz tests hold us to.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from marco_gguf.base.errors import CheckpointError, TensorError

MAX_HEADER_BYTES = 100_000_000  # the library's MAX_HEADER_SIZE
# dtype -> bits per element; source: safetensors' Rust `Dtype` enum (bitsize)
DTYPE_BITS: Mapping[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
# the float dtypes Marco's weights come in -> (numpy storage dtype, bytes per element)
WEIGHT_DTYPES: Mapping[str, tuple[str, int]] = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2)}
REDOWNLOAD = "the file is damaged or truncated: download this shard again"


@dataclass(frozen=True)
class TensorRef:
    """Where one safetensors tensor lives: file, dtype, shape and absolute byte offset."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    n_bytes: int

    @property
    def row_len(self) -> int:
        return self.shape[-1] if self.shape else 1

    @property
    def n_rows(self) -> int:
        return math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"name {key!r} appears twice")
        out[key] = value
    return out


def _header_json(file: Path, head: bytes, size: int) -> tuple[dict[str, Any], int]:
    """The header's JSON object and the data section's start, after the library's length checks."""
    if len(head) < 8:
        raise CheckpointError(
            f"{file}: not a safetensors file ({size} bytes, shorter than its 8-byte header length)", REDOWNLOAD
        )
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{file}: corrupt safetensors header: header length {n:,} exceeds the format's "
            f"limit of {MAX_HEADER_BYTES:,} bytes",
            REDOWNLOAD,
        )
    if 8 + n > size:
        raise CheckpointError(
            f"{file}: corrupt safetensors header: header length {n:,} runs past the end of the file ({size:,} bytes)",
            REDOWNLOAD,
        )
    try:
        text = head[8 : 8 + n].decode("utf-8")
        if not text.startswith("{"):
            raise ValueError(f"starts with {text[:1]!r}, expected '{{'")
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{file}: corrupt safetensors header (not a JSON object: {e})", REDOWNLOAD) from None
    return header, 8 + n


def _entry(file: Path, name: str, info: Any) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, typed as the library's TensorInfo."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{file}: corrupt safetensors header: tensor {name} {what}", REDOWNLOAD)

    if not isinstance(info, dict):
        raise bad(f"is {type(info).__name__} {info!r:.40}, expected an object with dtype, shape, data_offsets")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise bad(f"has dtype {dtype!r}, which is not a safetensors dtype")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise bad(f"has shape {shape!r:.60}, expected a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_natural(o) for o in offsets):
        raise bad(f"has data_offsets {offsets!r:.60}, expected [begin, end] (non-negative integers)")
    begin, end = offsets
    if begin > end:
        raise bad(f"has data_offsets [{begin}, {end}]: begin is after end")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or end - begin != bits // 8:
        raise bad(f"spans {end - begin:,} bytes, but shape {shape} in {dtype} needs {bits / 8:,g}")
    return dtype, tuple(shape), begin, end


def _natural(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_coverage(
    file: Path, entries: dict[str, tuple[str, tuple[int, ...], int, int]], base: int, size: int
) -> None:
    """Entries must tile the data section from byte 0 without gaps or overlap, and end where it ends."""
    expected, data_bytes = 0, size - base
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != expected:
            what = (
                "overlaps the tensor before it" if begin < expected else f"leaves a gap of {begin - expected:,} bytes"
            )
            raise CheckpointError(
                f"{file}: corrupt safetensors header: tensor {name} starts at data byte {begin:,}, "
                f"expected {expected:,} ({what})",
                REDOWNLOAD,
            )
        if end > data_bytes:
            raise CheckpointError(
                f"{file}: truncated: tensor {name} ends at byte {base + end:,} but the file has {size:,} bytes",
                "the download was interrupted: download this shard again",
            )
        expected = end
    if expected != data_bytes:
        raise CheckpointError(
            f"{file}: incomplete safetensors file: its tensors cover {expected:,} bytes of data but "
            f"the file holds {data_bytes:,} after the header (not fully covered)",
            REDOWNLOAD,
        )


def read_safetensors_header(file: Path) -> dict[str, TensorRef]:
    """Every tensor of one safetensors file, validated as the `safetensors` library validates it."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) == 8:
            head += f.read(min(int.from_bytes(head, "little"), MAX_HEADER_BYTES + 1, size))
    header, base = _header_json(file, head, size)
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise CheckpointError(
            f"{file}: corrupt safetensors header: __metadata__ is {meta!r:.60}, expected an object of strings",
            REDOWNLOAD,
        )
    entries = {name: _entry(file, name, info) for name, info in header.items()}
    _check_coverage(file, entries, base, size)
    refs = {}
    for name, (dtype, shape, begin, end) in entries.items():
        if dtype not in WEIGHT_DTYPES:
            raise TensorError(
                f"{file}: tensor {name} has dtype {dtype}; expected one of {', '.join(WEIGHT_DTYPES)}",
                "quantized or integer checkpoints are not supported: use the original BF16 release",
            )
        refs[name] = TensorRef(name, file, dtype, shape, base + begin, end - begin)
    return refs


def to_float32(buf: np.ndarray, dtype: str) -> np.ndarray:
    """Exact widening of F32/F16/BF16 storage to float32 (BF16 is the top half of an F32)."""
    if dtype == "BF16":
        return (buf.astype(np.uint32) << 16).view(np.float32)
    return buf.astype(np.float32, copy=False)


def encode_header(entries: list[tuple[str, str, tuple[int, ...]]]) -> bytes:
    """The 8-byte length and JSON header of a file holding `entries` (name, dtype, shape) back to back in that
    order, padded with spaces to 8 bytes as the library's writer pads it."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in entries:
        n = math.prod(shape) * DTYPE_BITS[dtype] // 8
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return len(blob).to_bytes(8, "little") + blob


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even as torch does."""
    u = x.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
