"""SOURCE given as a Hugging Face hub id: fetch only what a conversion reads, into the user's hub cache.

huggingface_hub does the real work (resumable downloads, its own progress bars, the standard cache
layout under HF_HOME, HF_TOKEN for gated repos, HF_HUB_OFFLINE); this module decides when SOURCE is
a hub id, which files to ask for, and turns its exceptions into one clear HubError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from marco_gguf.base.errors import HubError

HUB_URL = "https://huggingface.co"

# What convert() reads, and nothing else (a repo may also hold GGUFs, PyTorch .bin copies, images).
ALLOW_PATTERNS = (
    "config.json",  # hyperparameters
    "generation_config.json",  # sampling defaults (general.sampling.*)
    "*.safetensors",  # weights
    "model.safetensors.index.json",  # which shard holds which tensor
    "tokenizer.json",  # vocabulary and merges
    "tokenizer_config.json",  # special tokens, the chat template
    "chat_template.jinja",  # newer transformers keep the template here ...
    "chat_template.json",  # ... or here
    "README.md",  # model card front-matter: license, languages, base_model
    "LICENSE*",
)

# owner/name as the hub spells it (huggingface_hub's validate_repo_id, restricted to model repos with an owner)
_PART = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"{_PART}/{_PART}")


@dataclass(frozen=True)
class HubSnapshot:
    """A hub repository at one commit, present on disk in the hub cache."""

    repo_id: str
    commit: str
    folder: Path  # <cache>/models--owner--name/snapshots/<commit>

    @property
    def owner(self) -> str:
        return self.repo_id.split("/")[0]

    @property
    def name(self) -> str:
        return self.repo_id.split("/")[1]

    @property
    def url(self) -> str:
        return f"{HUB_URL}/{self.repo_id}"


def is_hub_id(source: str | Path) -> bool:
    """True when SOURCE is not an existing local path and is shaped like `owner/name`."""
    text = str(source)
    return not Path(text).exists() and HUB_ID.fullmatch(text) is not None and ".." not in text and "--" not in text


def download(repo_id: str, *, revision: str | None = None) -> HubSnapshot:
    """Fetch (or find in the cache) the files of `repo_id` that a conversion needs; see ALLOW_PATTERNS."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hf

    at = f" at revision {revision}" if revision else ""
    cache = constants.HF_HUB_CACHE
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=list(ALLOW_PATTERNS))
    except hf.RevisionNotFoundError:
        raise HubError(
            f"{repo_id}: revision {revision!r} not found on the hub",
            "pass a branch, tag or commit that exists (see the repo's 'Files and versions')",
        ) from None
    except hf.GatedRepoError:
        raise HubError(
            f"{repo_id} is gated: its license must be accepted before downloading",
            f"accept it on {HUB_URL}/{repo_id}, then set HF_TOKEN (or run `hf auth login`)",
        ) from None
    except hf.RepositoryNotFoundError:
        raise HubError(
            f"{repo_id} is not a local folder, nor a model repository on the hub (or it is private)",
            "check the spelling; for a private repo set HF_TOKEN",
        ) from None
    except hf.LocalEntryNotFoundError as e:
        incomplete = getattr(hf, "IncompleteSnapshotError", None)  # huggingface_hub >= 1.x
        if incomplete is not None and isinstance(e, incomplete):
            raise HubError(
                f"{repo_id}{at}: the cached copy in {cache} is incomplete and the hub cannot be reached",
                "download it again with network access (the download resumes)",
            ) from None
        if constants.HF_HUB_OFFLINE:
            raise HubError(
                f"{repo_id}{at} is not a local folder and is not in the Hugging Face cache ({cache}), "
                "and HF_HUB_OFFLINE is set",
                "unset HF_HUB_OFFLINE to download it, or pass the path of a local copy",
            ) from None
        raise HubError(
            f"{repo_id}{at} is not a local folder, the hub cannot be reached, and it is not in the "
            f"Hugging Face cache ({cache})",
            "check the network connection, or pass the path of a local copy",
        ) from None
    except hf.HfHubHTTPError as e:
        raise HubError(f"{repo_id}: the hub refused the download ({e})", "try again later") from None
    except OSError as e:  # disk full, unwritable HF_HOME
        raise HubError(
            f"{repo_id}: could not store the download in {cache} ({e})",
            "free space there, or point HF_HOME at another disk",
        ) from None
    snapshot = Path(folder)
    return HubSnapshot(repo_id, snapshot.name, snapshot)


def resolve_source(source: str | Path, *, revision: str | None = None) -> HubSnapshot | None:
    """A downloaded snapshot when SOURCE is a hub id, None when it is a local path."""
    if is_hub_id(source):
        return download(str(source), revision=revision)
    if revision is not None:
        raise HubError(
            f"revision {revision!r} applies to hub ids only, but {source} is a local path",
            "drop --revision, or give SOURCE as owner/name",
        )
    return None
