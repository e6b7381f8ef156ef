"""SOURCE as a hub id: found in a Hugging Face cache laid out as huggingface_hub lays it out, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import Spec
from gguf import GGUFReader
from model_files import add_to_hub_cache, card, variant

from marco_gguf import __version__, convert
from marco_gguf.base.errors import HubError
from marco_gguf.hf.hub import ALLOW_PATTERNS, is_hub_id

REPO = "AIDC-AI/Marco-Test-Instruct"
URL = f"https://huggingface.co/{REPO}"
OLD, NEW = "1" * 40, "2" * 40  # two commits of REPO: main -> NEW, tag v1.0 -> OLD
CARD_NEW = card(license="apache-2.0", language=["en", "zh"], base_model="Qwen/Qwen3-0.6B-Base")
CARD_OLD = card(license="mit")


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, checkpoint) -> Path:
    """An HF_HOME whose hub cache holds two commits of REPO (weights shared, model cards differ)."""
    root = tmp_path_factory.mktemp("hf")
    for commit, readme, ref in ((OLD, CARD_OLD, "v1.0"), (NEW, CARD_NEW, "main")):
        src = variant(checkpoint(Spec()), root / f"src-{commit[0]}" / "Marco-Test-Instruct", readme=readme)
        add_to_hub_cache(root / "home", REPO, src, commit, ref=ref)
    return root / "home"


@pytest.fixture
def offline(hf_home, monkeypatch):
    """huggingface_hub reads HF_HOME and HF_HUB_OFFLINE at import: point its constants at the test cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hf_home


def run_cli(*args: str, hf_home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "marco_gguf", *args], capture_output=True, text=True, env=env, cwd=cwd)


def metadata(path: Path) -> dict:
    return {f.name: f.contents() for f in GGUFReader(path).fields.values() if not f.name.startswith("GGUF.")}


HUB_KEYS = ("general.base_model.", "general.repo_url")  # what a hub id adds over a local clone


def test_converts_a_cached_hub_id_offline(hf_home, checkpoint, tmp_path):
    proc = run_cli(
        "convert", REPO, "--preset", "q8_0", "--outdir", str(tmp_path), "--json", hf_home=hf_home, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    path = tmp_path / "Marco-Test-Instruct-Q8_0.gguf"  # named after the repo, not the snapshot's commit folder
    assert (result["path"], result["hub_repo"], result["hub_commit"]) == (str(path), REPO, NEW)
    ours = metadata(path)
    assert {k: v for k, v in ours.items() if k.startswith(HUB_KEYS)} == {
        "general.repo_url": URL,
        "general.base_model.count": 1,  # the source repo replaces the card's own base_model
        "general.base_model.0.name": "Marco Test Instruct",
        "general.base_model.0.organization": "AIDC AI",
        "general.base_model.0.repo_url": URL,
    }
    assert {
        k: ours[k]
        for k in (
            "general.name",
            "general.basename",
            "general.finetune",
            "general.license",
            "general.languages",
            "general.quantized_by",
        )
    } == {
        "general.name": "Marco Test Instruct",
        "general.basename": "Marco-Test",
        "general.finetune": "Instruct",
        "general.license": "apache-2.0",
        "general.languages": ["en", "zh"],
        "general.quantized_by": f"marco-gguf {__version__}",
    }
    # everything else is exactly what a local clone named like the repo converts to
    clone = variant(checkpoint(Spec()), tmp_path / "clone" / "Marco-Test-Instruct", readme=CARD_NEW)
    local = convert(clone, preset="q8_0", outdir=clone.parent, threads=2).path
    assert {k: v for k, v in ours.items() if not k.startswith(HUB_KEYS)} == {
        k: v for k, v in metadata(local).items() if not k.startswith(HUB_KEYS)
    }
    assert {t.name: bytes(t.data) for t in GGUFReader(path).tensors} == {
        t.name: bytes(t.data) for t in GGUFReader(local).tensors
    }


REVISIONS = [  # (reason, revision, commit converted, license in its model card)
    ("no revision: the main branch", None, NEW, "apache-2.0"),
    ("a commit hash", OLD, OLD, "mit"),
    ("a tag", "v1.0", OLD, "mit"),
]


@pytest.mark.parametrize("reason,revision,commit,license", REVISIONS, ids=[r[0] for r in REVISIONS])
def test_revision_selects_the_commit(reason, revision, commit, license, offline, tmp_path):
    result = convert(REPO, preset="f32", outdir=tmp_path, revision=revision, threads=2)
    assert result.hub_commit == commit
    assert metadata(result.path)["general.license"] == license


ERRORS = [  # (reason, source, revision, fragments of the message)
    (
        "hub id not in the cache while offline",
        "AIDC-AI/Marco-Missing",
        None,
        ["AIDC-AI/Marco-Missing is not a local folder", "not in the Hugging Face cache", "HF_HUB_OFFLINE is set"],
    ),
    (
        "a commit that was never downloaded",
        REPO,
        "f" * 40,
        [f"at revision {'f' * 40}", "not in the Hugging Face cache"],
    ),
    ("a branch that was never downloaded", REPO, "dev", ["at revision dev", "not in the Hugging Face cache"]),
]


@pytest.mark.parametrize("reason,source,revision,fragments", ERRORS, ids=[e[0] for e in ERRORS])
def test_uncached_hub_ids_fail_clearly(reason, source, revision, fragments, offline, tmp_path):
    with pytest.raises(HubError) as e:
        convert(source, outdir=tmp_path, revision=revision)
    for fragment in fragments:
        assert fragment in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_revision_of_a_local_folder_is_refused(checkpoint, tmp_path):
    with pytest.raises(HubError, match="revision 'main' applies to hub ids only"):
        convert(checkpoint(Spec()), outdir=tmp_path, revision="main")


def test_cli_error_for_an_uncached_hub_id_is_one_line(hf_home, tmp_path):
    proc = run_cli("convert", "AIDC-AI/Marco-Missing", hf_home=hf_home, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "not in the Hugging Face cache" in proc.stderr and "unset HF_HUB_OFFLINE" in proc.stderr


HUB_IDS = [  # (reason, source, is a hub id)
    ("owner/name", "AIDC-AI/Marco-Mini-Instruct", True),
    ("dots and underscores", "some_org/model.v2", True),
    ("a name without owner is a folder name", "Marco-Mini-Instruct", False),
    ("relative path", "./AIDC-AI/Marco", False),
    ("absolute path", "/models/Marco", False),
    ("three levels", "models/AIDC-AI/Marco", False),
    ("'--' is reserved by the cache layout", "AIDC--AI/Marco", False),
    ("'..' is not allowed", "AIDC-AI/Marco..Mini", False),
]


@pytest.mark.parametrize("reason,source,expected", HUB_IDS, ids=[h[0] for h in HUB_IDS])
def test_what_counts_as_a_hub_id(reason, source, expected):
    assert is_hub_id(source) is expected


def test_an_existing_folder_shaped_like_a_hub_id_is_local(tmp_path, monkeypatch):
    (tmp_path / "AIDC-AI" / "Marco").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("AIDC-AI/Marco")


REPO_FILES = {  # a published repo's listing -> downloaded?
    "config.json": True,
    "generation_config.json": True,
    "model.safetensors.index.json": True,
    "model-00001-of-00002.safetensors": True,
    "model-00002-of-00002.safetensors": True,
    "tokenizer.json": True,
    "tokenizer_config.json": True,
    "chat_template.jinja": True,
    "README.md": True,
    "LICENSE": True,
    "LICENSE.txt": True,
    "vocab.json": False,
    "merges.txt": False,  # tokenizer.json already holds them
    "pytorch_model.bin": False,
    "Marco-Mini-Instruct-Q4_K_M.gguf": False,  # other formats of the same weights
    "figures/benchmark.png": False,
    ".gitattributes": False,
}


def test_only_the_files_conversion_reads_are_downloaded():
    from huggingface_hub.utils import filter_repo_objects

    chosen = set(filter_repo_objects(REPO_FILES, allow_patterns=list(ALLOW_PATTERNS)))
    assert chosen == {f for f, wanted in REPO_FILES.items() if wanted}
