"""The GGUF format's own facts that both the reader and the writer need: alignment, scalar encodings, row sizes."""

from __future__ import annotations

from collections.abc import Mapping

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

ALIGNMENT = gguf.GGUF_DEFAULT_ALIGNMENT  # 32
# scalar value type -> struct format; source: gguf-py gguf_writer.py _simple_value_packing
SCALAR_FORMATS: Mapping[V, str] = {
    V.UINT8: "B",
    V.INT8: "b",
    V.UINT16: "H",
    V.INT16: "h",
    V.UINT32: "I",
    V.INT32: "i",
    V.FLOAT32: "f",
    V.UINT64: "Q",
    V.INT64: "q",
    V.FLOAT64: "d",
    V.BOOL: "?",
}


def row_size(qtype: Q, n_per_row: int) -> int:
    """Bytes of one row of `n_per_row` elements in `qtype` (gguf-py's block table)."""
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return n_per_row // block * type_size
