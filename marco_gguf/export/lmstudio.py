"""`export lmstudio`: place a GGUF where LM Studio finds it, as `lms import` would, never moving the user's file.

LM Studio lists `<models folder>/<publisher>/<model>/<file>.gguf`, exactly two folder levels deep. Its
home and models folder are found as lms does (lmstudio-js findLMStudioHome, lms modelsFolder.ts);
unlike LM Studio we never write its pointer file: we only read.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marco_gguf.base.errors import ExportError
from marco_gguf.base.files import check_writable, copy_atomic, link_atomic, make_folders, remove_folders
from marco_gguf.gguf_io.reader import read_header

POINTER_FILE = ".lmstudio-home-pointer"  # in the user's home: the path of LM Studio's home
DEFAULT_PUBLISHER = "marco-gguf"

# lms import's folder-name rules (importCmd.ts isValidFolderName), as (what is wrong, test) pairs
FOLDER_NAME_RULES = (
    ("cannot be empty", lambda s: s == ""),
    ("is longer than 100 characters", lambda s: len(s) > 100),
    ('cannot start or end with "."', lambda s: s.startswith(".") or s.endswith(".")),
    ("cannot have leading or trailing spaces", lambda s: s.strip() != s),
    ('cannot contain any of / < > : " \\ | ? *', lambda s: re.search(r'[/<>:"\\|?*]', s) is not None),
)
# lms import's flag for each way of placing the file
LMS_FLAGS = {"copy": "-c", "hardlink": "-L", "symlink": "-l"}
WORDS = {"copy": "copy", "hardlink": "hard link", "symlink": "symlink"}
QUANT_SUFFIX = re.compile(r"[-.](?:I?Q\d\w*|BF16|F16|F32)$", re.IGNORECASE)  # publisher file names end in the type


@dataclass(frozen=True)
class LMStudioExport:
    """Where the GGUF now is in LM Studio's models folder, and how it got there."""

    source: Path
    target: Path
    method: str  # hardlink, copy, symlink, or existing (already there)
    models_dir: Path
    command: str  # the equivalent lms import

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "target": str(self.target),
            "method": self.method,
            "models_dir": str(self.models_dir),
            "command": self.command,
        }


def lmstudio_home(home: Path | None = None) -> Path:
    """LM Studio's home: the path in ~/.lmstudio-home-pointer, else ~/.cache/lm-studio if present, else ~/.lmstudio."""
    user_home = Path(home) if home is not None else Path.home()
    user_home = user_home.resolve()
    pointer = user_home / POINTER_FILE
    if pointer.is_file():
        target = pointer.read_text(encoding="utf-8").strip()
        if target:
            return user_home / target  # an absolute path stays as is
    cache_home = user_home / ".cache" / "lm-studio"
    return cache_home if cache_home.exists() else user_home / ".lmstudio"


def models_dir(lms_home: Path) -> Path:
    """`downloadsFolder` from <home>/settings.json when it is set, else <home>/models."""
    try:
        folder = json.loads((lms_home / "settings.json").read_text(encoding="utf-8")).get("downloadsFolder")
    except (OSError, ValueError, AttributeError):
        folder = None
    return Path(folder).expanduser() if isinstance(folder, str) and folder else lms_home / "models"


def _check_folder_name(what: str, value: str) -> None:
    for problem, broken in FOLDER_NAME_RULES:
        if broken(value):
            raise ExportError(f"{what} {value!r} {problem}", "LM Studio needs a plain folder name")


def default_model_folder(gguf_path: Path) -> str:
    """`Marco-Mini-Instruct-Q4_K_M.gguf` -> `Marco-Mini-Instruct-GGUF`: every quant of a model in one folder."""
    return QUANT_SUFFIX.sub("", gguf_path.stem) + "-GGUF"


def _mode(copy: bool, link: bool, symlink: bool) -> str:
    chosen = [m for m, on in (("copy", copy), ("hardlink", link), ("symlink", symlink)) if on]
    if len(chosen) > 1:
        raise ExportError("--copy, --link and --symlink are exclusive", "choose one, or none for a hard link or copy")
    return chosen[0] if chosen else "auto"


def _place(src: Path, target: Path, mode: str) -> str:
    if mode == "symlink":
        link_atomic(src, target, symbolic=True)
        return "symlink"
    if mode == "copy":
        copy_atomic(src, target)
        return "copy"
    if os.stat(src).st_dev == os.stat(target.parent).st_dev:  # auto or hardlink
        try:
            link_atomic(src, target, symbolic=False)
            return "hardlink"
        except OSError as e:  # a filesystem without hard links
            if mode == "hardlink":
                raise ExportError(
                    f"cannot hard-link {src} into {target.parent} ({e.strerror})", "use --copy or --symlink"
                ) from None
    elif mode == "hardlink":
        raise ExportError(
            f"cannot hard-link {src}: {target.parent} is on another filesystem", "use --copy or --symlink"
        )
    copy_atomic(src, target)
    return "copy"


def _placed_as(src: Path, target: Path) -> str | None:
    """How `target` already holds `src`: "symlink", "hardlink" (the same file), or None (absent or another file)."""
    if not target.exists() or not os.path.samefile(src, target):
        return None
    return "symlink" if target.is_symlink() else "hardlink"


def _with(mode: str) -> str:
    return f" with a {WORDS[mode]}" if mode in WORDS else ""


def _place_checked(src: Path, target: Path, mode: str) -> str:
    """Check that the models folder can be written before placing the file; leave it as it was on failure."""
    hint = "make LM Studio's models folder writable, or point its downloadsFolder setting elsewhere"
    check_writable(target, hint=hint, error=ExportError)
    made: list[Path] = []
    try:
        made = make_folders(target.parent)
        return _place(src, target, mode)
    except (OSError, ExportError) as e:
        remove_folders(made)  # leave LM Studio's folder as it was
        if isinstance(e, ExportError):
            raise
        raise ExportError(f"{target}: cannot write it ({e.strerror or e})", hint) from None


def export_lmstudio(
    gguf: str | Path,
    *,
    publisher: str = DEFAULT_PUBLISHER,
    model: str | None = None,
    copy: bool = False,
    link: bool = False,
    symlink: bool = False,
    home: str | Path | None = None,
    force: bool = False,
) -> LMStudioExport:
    """Place `gguf` at <models>/<publisher>/<model>/<file>.gguf: a hard link on the same filesystem, else a copy."""
    mode = _mode(copy, link, symlink)
    src = Path(gguf).resolve()
    read_header(src)  # refuse anything that is not a readable GGUF
    model = model or default_model_folder(src)
    _check_folder_name("publisher", publisher)
    _check_folder_name("model folder", model)
    folder = models_dir(lmstudio_home(Path(home) if home is not None else None))
    target = folder / publisher / model / src.name
    placed = _placed_as(src, target)
    if placed is not None and mode in ("auto", placed):  # already there, the way asked for
        method = "existing"
    else:
        if (target.exists() or target.is_symlink()) and not force:
            what = f"is a {WORDS[placed]} to {src}" if placed else "is another file"
            raise ExportError(f"{target} already exists and {what}", f"pass --force to replace it{_with(mode)}")
        method = _place_checked(src, target, mode)
    flag = LMS_FLAGS[placed if placed and method == "existing" else method]
    command = f"lms import {shlex.quote(str(src))} --user-repo {shlex.quote(f'{publisher}/{model}')} {flag}"
    return LMStudioExport(src, target, method, folder, command)
