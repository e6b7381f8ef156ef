"""Variants of a fixture checkpoint (model card, generation config, chat template) and a Hugging Face hub
cache laid out exactly as huggingface_hub lays it out, so hub downloads can be tested offline."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path


def card(**front_matter) -> str:
    """A README.md with YAML front-matter, as model repos on the hub carry."""
    lines = ["---"]
    for key, value in front_matter.items():
        if isinstance(value, list):
            lines += [f"{key}:"] + [f"- {v}" for v in value]
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines + ["---", "", "# A test model", ""])


def variant(
    src: Path, dst: Path, *, readme: str | None = None, generation: dict | None = None, chat_template: str | None = None
) -> Path:
    """A copy of checkpoint folder `src` at `dst` with a model card, sampling defaults or another template."""
    shutil.copytree(src, dst)
    if readme is not None:
        (dst / "README.md").write_text(readme)
    if generation is not None:
        path = dst / "generation_config.json"
        config = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**config, **generation}, indent=2))
    if chat_template is not None:
        path = dst / "tokenizer_config.json"
        config = json.loads(path.read_text())
        path.write_text(json.dumps({**config, "chat_template": chat_template}, indent=2))
    return dst


def add_to_hub_cache(hf_home: Path, repo_id: str, folder: Path, commit: str, *, ref: str | None = "main") -> Path:
    """Store `folder`'s files as commit `commit` of model repo `repo_id` in `<hf_home>/hub`, the way
    huggingface_hub does: content-addressed blobs, a snapshot of relative symlinks, refs/<ref> -> commit."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(f, blob)
        link = snapshot / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot
