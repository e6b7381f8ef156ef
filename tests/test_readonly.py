"""Destinations that cannot be written (issue 26): every writing command says so in one red line, before any
work, and names the option to change; a write that fails after the check (the folder changed meanwhile, a
filesystem whose permissions lie) is one line too, with no second traceback from the cleanup.

Read-only filesystems are real: a read-only bind mount in a private user and mount namespace (`unshare -rm`,
no privileges needed where unprivileged user namespaces are allowed). A folder that is a file is real
everywhere; a chmod'ed folder is real for any user but root (for whom chmod denies nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import Spec
from typer.testing import CliRunner

from marco_gguf.cli.app import app
from marco_gguf.experts.usage import expert_usage
from marco_gguf.quant.imatrix import read_text

MODEL = Spec(dtype="f32")
CTX = 64
# run "$@" with $1 a read-only bind mount of $0, in a namespace of its own: nothing outside sees the mount
MOUNT_RO = 'mount --bind "$0" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"'
# the same program with os.access always saying yes: the up-front check passes, the write itself fails
ACCESS_LIES = (
    "import os, sys; os.access = lambda *a, **k: True; sys.argv[0] = 'marco-gguf'; "
    "from marco_gguf.cli.app import main; main()"
)


def _can_mount() -> bool:
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o ro none /mnt"], capture_output=True)
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="no unprivileged mount namespace (unshare -rm)")


@pytest.fixture(scope="module")
def files(converted, tmp_path_factory) -> dict[str, Path]:
    """A GGUF in a folder of its own, a text, a usage file measured on the GGUF, an empty folder."""
    root = tmp_path_factory.mktemp("ro")
    (root / "models").mkdir()
    gguf = root / "models" / "m-Q8_0.gguf"
    os.link(converted(MODEL, "q8_0").path, gguf)
    text = root / "t.txt"
    text.write_text(read_text(None)[0][:3000], encoding="utf-8")
    usage = root / "usage.json"
    expert_usage(converted(MODEL, "f32").path, [text], ctx=CTX, usage=usage)
    (root / "empty").mkdir()
    (root / "home" / ".lmstudio" / "models").mkdir(parents=True)
    return {"gguf": gguf, "text": text, "usage": usage, "empty": root / "empty", "home": root / "home"}


# (reason, argv with {gguf} {text} {usage} {ro}, what is mounted read-only at {ro}, message after "error: ")
COMMANDS = [
    (
        "export ollama --outdir on a read-only filesystem",
        ["export", "ollama", "{gguf}", "--outdir", "{ro}"],
        "empty",
        "{ro}: output folder is on a read-only filesystem — choose another --outdir",
    ),
    (
        "export ollama --outdir that would be made inside a read-only folder",
        ["export", "ollama", "{gguf}", "--outdir", "{ro}/sub"],
        "empty",
        "{ro}: output folder is on a read-only filesystem — choose another --outdir",
    ),
    (
        "card of a read-only folder of GGUFs (the card goes beside the files)",
        ["card", "{ro}"],
        "models",
        "{ro}: output folder is on a read-only filesystem — the card is written beside the files: make the "
        "folder writable, or link the files into one that is",
    ),
    (
        "export lmstudio into a read-only LM Studio models folder",
        ["export", "lmstudio", "{gguf}"],
        "lmstudio",
        "{ro}: output folder is on a read-only filesystem — make LM Studio's models folder writable, or point "
        "its downloadsFolder setting elsewhere",
    ),
    (
        "imatrix -o into a read-only folder: refused before the minutes of computing",
        ["imatrix", "{gguf}", "--text", "{text}", "-c", str(CTX), "-o", "{ro}/m.imatrix.gguf"],
        "empty",
        "{ro}: output folder is on a read-only filesystem — choose another -o",
    ),
    (
        "prune -o into a read-only folder names -o (prune has no --outdir)",
        ["prune", "{gguf}", "--keep", "8", "--usage", "{usage}", "-o", "{ro}/p.gguf"],
        "empty",
        "{ro}: output folder is on a read-only filesystem — choose another -o",
    ),
]


def _argv(argv: list[str], files: dict[str, Path], ro: Path) -> list[str]:
    return [a.format(ro=ro, **files) for a in argv]


def _mounted(files: dict[str, Path], what: str) -> tuple[Path, Path]:
    """(what is mounted, where): LM Studio's models folder over itself, else a folder over the empty one."""
    if what == "lmstudio":
        models = files["home"] / ".lmstudio" / "models"
        return models, models
    return (files["gguf"].parent if what == "models" else files["empty"]), files["empty"]


@needs_mount
@pytest.mark.parametrize("reason,argv,mounted,message", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_read_only_filesystem_is_one_line_before_any_work(reason, argv, mounted, message, files):
    src, ro = _mounted(files, mounted)
    cmd = ["unshare", "-rm", "sh", "-c", MOUNT_RO, str(src), str(ro), sys.executable, "-m", "marco_gguf"]
    env = {**os.environ, "HOME": str(files["home"])}
    proc = subprocess.run([*cmd, *_argv(argv, files, ro)], capture_output=True, text=True, env=env)
    assert (proc.returncode, proc.stderr) == (1, f"error: {message.format(ro=ro)}\n")  # no progress: no work
    assert proc.stdout == ""


LATE = [  # (reason, argv, mounted, message): the check passes (os.access lies), the kernel refuses the write
    (
        "the Modelfile's write, and its cleanup, fail on a read-only filesystem",
        ["export", "ollama", "{gguf}", "--outdir", "{ro}"],
        "empty",
        "{ro}/Modelfile: cannot write it (Read-only file system) — choose another --outdir",
    ),
    (
        "the card's write fails",
        ["card", "{ro}"],
        "models",
        "{ro}/README.md: cannot write it (Read-only file system) — the card is written beside the files: make the "
        "folder writable, or link the files into one that is",
    ),
    (
        "LM Studio's publisher folder cannot be made",
        ["export", "lmstudio", "{gguf}"],
        "lmstudio",
        "{ro}/marco-gguf/m-GGUF/m-Q8_0.gguf: cannot write it (Read-only file system) — make LM Studio's models "
        "folder writable, or point its downloadsFolder setting elsewhere",
    ),
]


@needs_mount
@pytest.mark.parametrize("reason,argv,mounted,message", LATE, ids=[c[0] for c in LATE])
def test_a_write_failing_after_the_check_is_one_line(reason, argv, mounted, message, files):
    src, ro = _mounted(files, mounted)
    cmd = ["unshare", "-rm", "sh", "-c", MOUNT_RO, str(src), str(ro), sys.executable, "-c", ACCESS_LIES]
    env = {**os.environ, "HOME": str(files["home"])}
    proc = subprocess.run([*cmd, *_argv(argv, files, ro)], capture_output=True, text=True, env=env)
    assert (proc.returncode, proc.stderr) == (1, f"error: {message.format(ro=ro)}\n")


FILE_PARENT = [  # (reason, argv with {blocker} a file where a folder should be, message)
    ("export ollama --outdir under a file", ["export", "ollama", "{gguf}", "--outdir", "{blocker}/sub"], "--outdir"),
    ("imatrix -o under a file", ["imatrix", "{gguf}", "--text", "{text}", "-o", "{blocker}/m.gguf"], "-o"),
    ("prune -o under a file", ["prune", "{gguf}", "--keep", "8", "--usage", "{usage}", "-o", "{blocker}/p.gguf"], "-o"),
]


@pytest.mark.parametrize("reason,argv,option", FILE_PARENT, ids=[c[0] for c in FILE_PARENT])
def test_a_folder_that_is_a_file_is_one_line(reason, argv, option, files, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    r = CliRunner().invoke(app, [a.format(blocker=blocker, **files) for a in argv])
    assert (r.exit_code, r.stderr) == (1, f"error: {blocker}: is a file, not a folder — choose another {option}\n")
    assert sorted(tmp_path.iterdir()) == [blocker]


def test_lmstudio_models_folder_that_is_a_file(files, tmp_path):
    home = tmp_path / "home"
    (home / ".lmstudio").mkdir(parents=True)
    (home / ".lmstudio" / "models").write_text("a file")
    from marco_gguf.base.errors import ExportError
    from marco_gguf.export import export_lmstudio

    with pytest.raises(ExportError) as e:
        export_lmstudio(files["gguf"], home=home)
    assert str(e.value.message) == f"{home.resolve() / '.lmstudio' / 'models'}: is a file, not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 555 folder: chmod denies nothing")
def test_a_folder_without_write_permission(files, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    r = CliRunner().invoke(app, ["export", "ollama", str(files["gguf"]), "--outdir", str(locked)])
    assert (r.exit_code, r.stderr) == (1, f"error: {locked}: output folder is not writable — choose another --outdir\n")
