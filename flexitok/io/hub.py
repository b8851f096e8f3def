"""Hugging Face hub downloads (needs network access; everything else in flexitok works offline)."""

from __future__ import annotations

from pathlib import Path

from flexitok.errors import CheckpointError


def download_repo(repo_id: str, revision: str | None = None) -> Path:
    """Download the checkpoint files of ``repo_id`` into the HF cache and return the local folder."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, revision=revision, allow_patterns=["*.json", "*.safetensors"])
    except Exception as e:  # network errors, unknown repos, offline mode
        raise CheckpointError(f"cannot download {repo_id!r} from the Hugging Face hub: {e}") from e
    return Path(folder)
