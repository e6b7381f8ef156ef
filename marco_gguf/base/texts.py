"""Reading a user's text file the way llama.cpp's `-f` does: UTF-8, one trailing newline dropped.

imatrix, experts, prune and quality all read their texts here, so the same file gives the same tokens and the
same one-line error in every command.
"""

from __future__ import annotations

from pathlib import Path

from marco_gguf.base.errors import MarcoGGUFError


def decode_text(raw: bytes, name: str, error: type[MarcoGGUFError]) -> str:
    """`raw` as UTF-8 minus one trailing newline; `error` (the calling command's type) names the first bad byte."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(
            f"{name}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start:,} of {len(raw):,})",
            "convert it to UTF-8, e.g. iconv -t UTF-8",
        ) from None
    return text.removesuffix("\n")


def read_text_file(path: str | Path, error: type[MarcoGGUFError], what: str = "the text") -> str:
    """The UTF-8 text of `path` minus one trailing newline; unreadable or not UTF-8: one `error` line."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror})") from None
    return decode_text(raw, str(path), error)
