"""LM Studio: its home and models folder found as LM Studio finds them, the file placed two levels deep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from checkpoints import Spec

from marco_gguf.base.errors import ExportError
from marco_gguf.export import export_lmstudio, lmstudio_home, models_dir


def pointer_to(target: str):
    def setup(home: Path) -> None:
        (home / ".lmstudio-home-pointer").write_text(target.format(home=home) + "\n")

    return setup


def mkdir(rel: str):
    def setup(home: Path) -> None:
        (home / rel).mkdir(parents=True)

    return setup


def settings(home_rel: str, content: str):
    def setup(home: Path) -> None:
        (home / home_rel).mkdir(parents=True, exist_ok=True)
        (home / home_rel / "settings.json").write_text(content.replace("{home}", str(home)))

    return setup


HOMES = [  # (reason, setups, expected models folder relative to the fake home)
    ("fresh install: ~/.lmstudio", [], ".lmstudio/models"),
    ("~/.cache/lm-studio exists (older installs)", [mkdir(".cache/lm-studio")], ".cache/lm-studio/models"),
    (
        "the pointer file wins over ~/.cache/lm-studio",
        [mkdir(".cache/lm-studio"), pointer_to("{home}/elsewhere/lms")],
        "elsewhere/lms/models",
    ),
    ("an empty pointer file is ignored", [pointer_to("")], ".lmstudio/models"),
    (
        "downloadsFolder in settings.json",
        [settings(".lmstudio", '{"downloadsFolder": "{home}/big-disk/models"}')],
        "big-disk/models",
    ),
    ("settings.json without downloadsFolder", [settings(".lmstudio", '{"theme": "dark"}')], ".lmstudio/models"),
    ("settings.json that is not JSON", [settings(".lmstudio", "{oops")], ".lmstudio/models"),
]


@pytest.mark.parametrize("reason,setups,expected", HOMES, ids=[h[0] for h in HOMES])
def test_models_folder_found_like_lm_studio(reason, setups, expected, tmp_path):
    for setup in setups:
        setup(tmp_path)
    assert models_dir(lmstudio_home(tmp_path)) == tmp_path.resolve() / expected


def test_home_defaults_to_the_users_home(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    assert lmstudio_home() == tmp_path.resolve() / ".lmstudio"


@pytest.fixture
def gguf(converted, tmp_path) -> Path:
    """A private hard link to a converted file, so placements cannot touch the session's copy."""
    src = converted(Spec(), "q8_0").path
    (tmp_path / "src").mkdir()
    os.link(src, tmp_path / "src" / src.name)
    return tmp_path / "src" / src.name


PLACEMENTS = [  # (reason, flags, method, lms import flag)
    ("default on one filesystem: a hard link", {}, "hardlink", "-L"),
    ("--copy", {"copy": True}, "copy", "-c"),
    ("--link", {"link": True}, "hardlink", "-L"),
    ("--symlink", {"symlink": True}, "symlink", "-l"),
]


@pytest.mark.parametrize("reason,flags,method,lms_flag", PLACEMENTS, ids=[p[0] for p in PLACEMENTS])
def test_placement(reason, flags, method, lms_flag, gguf, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    original = gguf.read_bytes()
    r = export_lmstudio(gguf, home=home, **flags)
    models = home.resolve() / ".lmstudio" / "models"
    assert r.target.relative_to(models).parts == ("marco-gguf", "Marco-Test-Instruct-GGUF", gguf.name)  # two levels
    assert r.method == method and gguf.read_bytes() == r.target.read_bytes() == original  # never moved
    assert r.target.is_symlink() == (method == "symlink")
    assert os.path.samefile(gguf, r.target) == (method != "copy")
    assert r.command == f"lms import {gguf} --user-repo marco-gguf/Marco-Test-Instruct-GGUF {lms_flag}"


def test_running_again_finds_it_in_place(gguf, tmp_path):
    first = export_lmstudio(gguf, home=tmp_path, publisher="me")
    again = export_lmstudio(gguf, home=tmp_path, publisher="me")
    assert (first.method, again.method, again.target) == ("hardlink", "existing", first.target)


def other_filesystem() -> Path | None:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tempfile.gettempdir()).st_dev:
        return shm
    return None


@pytest.mark.skipif(other_filesystem() is None, reason="no writable second filesystem (/dev/shm) to copy across")
def test_across_filesystems_the_default_is_a_copy(gguf):
    with tempfile.TemporaryDirectory(dir=other_filesystem()) as home:
        r = export_lmstudio(gguf, home=home)
        assert r.method == "copy" and not os.path.samefile(gguf, r.target) and r.command.endswith(" -c")
        with pytest.raises(ExportError, match="is on another filesystem"):
            export_lmstudio(gguf, home=home, link=True, publisher="other")
        assert not (r.models_dir / "other").exists()  # nothing left behind


ERRORS = [  # (reason, keywords, fragments of the message)
    ("two placement flags", {"copy": True, "symlink": True}, ["--copy, --link and --symlink are exclusive"]),
    ("a publisher with a slash would add a level", {"publisher": "a/b"}, ["publisher 'a/b' cannot contain"]),
    ("a hidden publisher folder", {"publisher": ".me"}, ["publisher '.me' cannot start or end with \".\""]),
    ("another file already at the target", {"prepare": True}, ["already exists and is another file", "--force"]),
]


@pytest.mark.parametrize("reason,kwargs,fragments", ERRORS, ids=[e[0] for e in ERRORS])
def test_refusals(reason, kwargs, fragments, gguf, tmp_path):
    if kwargs.pop("prepare", False):
        target = tmp_path / ".lmstudio" / "models" / "marco-gguf" / "Marco-Test-Instruct-GGUF" / gguf.name
        target.parent.mkdir(parents=True)
        target.write_text("someone else's file")
    with pytest.raises(ExportError) as e:
        export_lmstudio(gguf, home=tmp_path, **kwargs)
    for fragment in fragments:
        assert fragment in str(e.value)


def test_force_replaces_another_file(gguf, tmp_path):
    target = tmp_path / ".lmstudio" / "models" / "marco-gguf" / "Marco-Test-Instruct-GGUF" / gguf.name
    target.parent.mkdir(parents=True)
    target.write_text("stale")
    assert export_lmstudio(gguf, home=tmp_path, force=True).method == "hardlink" and os.path.samefile(gguf, target)


def test_cli_uses_home_and_prints_lms_import(gguf, tmp_path):
    home = tmp_path / "home"
    (home / ".lmstudio").mkdir(parents=True)
    (home / ".lmstudio" / "settings.json").write_text(json.dumps({"downloadsFolder": str(tmp_path / "models")}))
    proc = subprocess.run(
        [sys.executable, "-m", "marco_gguf", "export", "lmstudio", str(gguf), "--publisher", "me", "--copy"],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(home)},
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "models" / "me" / "Marco-Test-Instruct-GGUF" / gguf.name).is_file()
    assert proc.stdout.splitlines()[-1] == f"lms import {gguf} --user-repo me/Marco-Test-Instruct-GGUF -c"


REPLACEMENTS = [  # (reason, first placement, second call's flags, method then, symlink?, message without --force)
    (
        "--symlink --force over a hard link makes the symlink asked for",
        {},
        {"symlink": True},
        "symlink",
        True,
        "already exists and is a hard link to {src} — pass --force to replace it with a symlink",
    ),
    (
        "--link --force over a symlink makes the hard link asked for",
        {"symlink": True},
        {"link": True},
        "hardlink",
        False,
        "already exists and is a symlink to {src} — pass --force to replace it with a hard link",
    ),
    (
        "--copy --force over a hard link makes a copy",
        {},
        {"copy": True},
        "copy",
        False,
        "already exists and is a hard link to {src} — pass --force to replace it with a copy",
    ),
]


@pytest.mark.parametrize("reason,first,flags,method,is_symlink,message", REPLACEMENTS, ids=[r[0] for r in REPLACEMENTS])
def test_force_replaces_a_placement_of_another_kind(reason, first, flags, method, is_symlink, message, gguf, tmp_path):
    placed = export_lmstudio(gguf, home=tmp_path, **first).target
    with pytest.raises(ExportError) as e:
        export_lmstudio(gguf, home=tmp_path, **flags)
    assert f"{e.value.message} — {e.value.hint}" == f"{placed} " + message.format(src=gguf)
    r = export_lmstudio(gguf, home=tmp_path, force=True, **flags)
    assert (r.method, r.target.is_symlink(), r.target.read_bytes() == gguf.read_bytes()) == (method, is_symlink, True)
    assert os.path.samefile(gguf, r.target) == (method != "copy")
    assert r.command.endswith(" " + {"symlink": "-l", "hardlink": "-L", "copy": "-c"}[method])


KEPT = [  # (reason, first placement, second call's flags, method reported, lms flag): no --force needed
    ("the default finds its hard link in place", {}, {}, "existing", "-L"),
    ("--symlink finds its symlink in place", {"symlink": True}, {"symlink": True}, "existing", "-l"),
    ("the default takes a symlink already there", {"symlink": True}, {}, "existing", "-l"),
]


@pytest.mark.parametrize("reason,first,flags,method,lms_flag", KEPT, ids=[k[0] for k in KEPT])
def test_a_placement_of_the_kind_asked_is_kept(reason, first, flags, method, lms_flag, gguf, tmp_path):
    before = export_lmstudio(gguf, home=tmp_path, **first).target
    r = export_lmstudio(gguf, home=tmp_path, **flags)
    assert (r.method, r.target, r.command.split()[-1]) == (method, before, lms_flag)


def test_cli_never_wraps_the_paths(gguf, tmp_path):
    """Reason: a path broken mid-word at the terminal's edge cannot be copied."""
    from typer.testing import CliRunner

    from marco_gguf.cli.app import app

    home = tmp_path / ("a-long-folder-name-" * 4)
    home.mkdir()
    r = CliRunner().invoke(
        app, ["export", "lmstudio", str(gguf), "--symlink"], env={"HOME": str(home)}, terminal_width=40
    )
    assert r.exit_code == 0, r.output
    target = home.resolve() / ".lmstudio" / "models" / "marco-gguf" / "Marco-Test-Instruct-GGUF" / gguf.name
    assert r.stdout.splitlines() == [
        str(target),
        "method         symlink",
        f"models folder  {home.resolve() / '.lmstudio' / 'models'}",
        "the same with LM Studio's CLI:",
        f"lms import {gguf} --user-repo marco-gguf/Marco-Test-Instruct-GGUF -l",
    ]
