"""Writing beside the user's files: whole files or nothing (temp file in the same folder, then rename)."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable


def _atomically(dst: Path, make: Callable[[Path], object]) -> None:
    """`make(tmp)` creates a temporary path beside `dst`, which then replaces `dst` in one rename."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        make(tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, make: Callable[[Path], object]) -> None:
    """`make(tmp)` writes a temporary file that then replaces `path` in one rename (nothing left on error)."""
    _atomically(path, make)


def write_text_atomic(path: Path, text: str) -> None:
    _atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def copy_atomic(src: Path, dst: Path) -> None:
    _atomically(dst, lambda tmp: shutil.copyfile(src, tmp))


def link_atomic(src: Path, dst: Path, *, symbolic: bool) -> None:
    """A hard or symbolic link at `dst`, replacing what is there only once the link exists."""
    _atomically(dst, lambda tmp: os.symlink(src, tmp) if symbolic else os.link(src, tmp))
