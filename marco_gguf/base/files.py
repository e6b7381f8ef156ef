"""File safety, one way for every module: whole files or nothing (a temp file in the same folder, then one
rename or link), output folders made on demand and removed again on failure, disk space checked up front.

The streaming GGUF writer (writer.py) keeps its own temp file open across many writes but publishes it
and checks space through these functions. qwen_vocab.py keeps a private copy of `write_atomic`: it must
run on the standard library alone, loaded by path (its test does that).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from marco_gguf.base.errors import MarcoGGUFError, OutputError


def _atomically(dst: Path, make: Callable[[Path], object]) -> None:
    """`make(tmp)` creates a temporary path beside `dst`, which then replaces `dst` in one rename."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        make(tmp)
        os.replace(tmp, dst)
    except BaseException:
        # on a read-only filesystem unlink fails with EROFS even for a missing file: the first error is the one
        with contextlib.suppress(OSError):
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


@contextlib.contextmanager
def folder_atomic(out: Path, *, overwrite: bool, hint: str) -> Iterator[Path]:
    """A new hidden folder beside `out` to build in; when the block ends without error it becomes `out` in one
    rename (an old `out` is replaced only with `overwrite`), otherwise it is removed and `out` is untouched.
    Missing parents of `out` are made, and removed again on failure."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists", hint)
    made = make_folders(out.parent)
    build = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        build.mkdir()
        yield build
        if out.exists():  # replaced only now, when the new folder is complete
            old = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old")
            os.rename(out, old)
            os.rename(build, out)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.rename(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        remove_folders(made)
        raise


def publish(tmp: Path, dst: Path, *, overwrite: bool) -> None:
    """Move a finished temp file into place: replace `dst` only when asked; otherwise a hard link, which is atomic
    and fails if `dst` appeared meanwhile (then the temp file is left for the caller to remove)."""
    if overwrite:
        os.replace(tmp, dst)
    else:
        os.link(tmp, dst)
        os.unlink(tmp)


def existing_ancestor(folder: Path) -> Path:
    """`folder` or its nearest ancestor that exists (what a missing output folder will be created in)."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable(path: Path, *, hint: str, error: type[MarcoGGUFError] = OutputError) -> Path:
    """Refuse before any work when `path` cannot be written: its folder (or the ancestor a missing folder will be
    made in) is a file or is not writable. os.access asks the kernel what the write will ask, so a read-only
    filesystem and an immutable folder are refused for root too. Returns that existing folder."""
    folder = existing_ancestor(Path(path).parent)
    if not folder.is_dir():
        raise error(f"{folder}: is a file, not a folder", hint)
    if not os.access(folder, os.W_OK):
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
        raise error(f"{folder}: output folder is {'on a read-only filesystem' if read_only else 'not writable'}", hint)
    return folder


def make_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents (as mlx_lm.convert and `hf download --local-dir` do); returns the
    folders made, outermost first, so that a failed write can remove them again."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for f in reversed(missing):
        f.mkdir()
    return list(reversed(missing))


def remove_folders(made: list[Path]) -> None:
    for f in reversed(made):
        with contextlib.suppress(OSError):  # not empty (someone else wrote there): keep it
            f.rmdir()


def check_space(
    folder: Path,
    needed: int,
    *,
    target: Path | str,
    purpose: str = "",
    hint: str,
    error: type[MarcoGGUFError] = OutputError,
) -> None:
    """Refuse before writing when `folder` (or the ancestor it will be made in) has less than `needed` bytes free."""
    free = shutil.disk_usage(existing_ancestor(Path(folder))).free
    if free < needed:
        raise error(f"{target}: not enough disk space{purpose} ({needed:,} bytes needed, {free:,} free)", hint)
