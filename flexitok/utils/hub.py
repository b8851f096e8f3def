"""Hugging Face hub downloads (need network access; everything else in flexitok works offline)."""

from __future__ import annotations

import re
from pathlib import Path

from flexitok.errors import CheckpointError

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")


def is_repo_id(name: str) -> bool:
    """``owner/name`` as the hub spells repo ids (a relative path such as ``./x/y`` or ``a/b/c`` is not one)."""
    return bool(_REPO_ID.fullmatch(name)) and not name.endswith((".json", ".safetensors")) and ".." not in name


def download_repo(repo_id: str, revision: str | None = None) -> Path:
    """Download the checkpoint files of ``repo_id`` into the HF cache and return the local folder."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.md"])
    except Exception as e:  # network errors, unknown repos, offline mode
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot download {repo_id!r} from the Hugging Face hub: {first}") from e
    return Path(folder)
