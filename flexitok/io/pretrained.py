"""Our own checkpoint format (``config.json`` + ``model.safetensors``) and name resolution."""

from __future__ import annotations

import json
from pathlib import Path

from flexitok.config import FlexTokConfig
from flexitok.errors import CheckpointError
from flexitok.io.checkpoint import atomic_write_json, load_state_dict_strict, read_safetensors, save_safetensors

FORMAT = "flexitok"
FORMAT_VERSION = 1
ASSETS = Path(__file__).resolve().parent.parent / "assets"
# Bundled models shipped inside the package: name -> folder under flexitok/assets.
BUNDLED = {"default": "tokenizers/fmnist", "fmnist": "tokenizers/fmnist"}
# Released official checkpoints on the Hugging Face hub (need network access).
OFFICIAL_REPOS = {
    "d12-d12-in1k": "EPFL-VILAB/flextok_d12_d12_in1k",
    "d18-d18-in1k": "EPFL-VILAB/flextok_d18_d18_in1k",
    "d18-d28-in1k": "EPFL-VILAB/flextok_d18_d28_in1k",
    "d18-d28-dfn": "EPFL-VILAB/flextok_d18_d28_dfn",
}


def save_pretrained(model, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    if cfg.vae.kind == "diffusers" and cfg.vae.diffusers_config is None:
        cfg.vae.diffusers_config = dict(model.vae.vae.config)
        cfg.vae.pretrained = None
    save_safetensors(model.state_dict(), directory / "model.safetensors", metadata={"format": FORMAT})
    atomic_write_json(directory / "config.json", {"format": FORMAT, "version": FORMAT_VERSION, "config": cfg.to_dict()})
    return directory


def _load_ours(directory: Path):
    from flexitok.models.flextok import FlexTok

    try:
        blob = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {directory / 'config.json'}: {e}") from e
    if blob.get("format") != FORMAT:
        raise CheckpointError(f"{directory} is not a flexitok checkpoint (config.json has no 'format': 'flexitok')")
    if int(blob.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{directory} was written by a newer flexitok (format version {blob['version']})")
    try:
        config = FlexTokConfig.from_dict(blob["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"invalid config in {directory / 'config.json'}: {e}") from e
    tensors, _ = read_safetensors(directory / "model.safetensors")
    model = FlexTok(config)
    load_state_dict_strict(model, tensors, f"checkpoint {directory}")
    return model


def load_pretrained(name_or_path: str | Path):
    """Resolve a bundled name, a local folder/file (ours or official) or a Hugging Face repo id."""
    from flexitok.io.official import load_official

    key = str(name_or_path)
    if key in BUNDLED:
        folder = ASSETS / BUNDLED[key]
        if not (folder / "model.safetensors").is_file():
            raise CheckpointError(f"bundled model {key!r} is missing from this installation ({folder})")
        return _load_ours(folder)
    path = Path(key).expanduser()
    if path.is_file():
        return load_official(path)
    if path.is_dir():
        if (path / "config.json").is_file() and json.loads((path / "config.json").read_text()).get("format") == FORMAT:
            return _load_ours(path)
        if (path / "model.safetensors").is_file():
            return load_official(path / "model.safetensors")
        raise CheckpointError(f"{path} holds neither a flexitok nor an official FlexTok checkpoint")
    repo = OFFICIAL_REPOS.get(key, key)
    if repo.count("/") != 1:
        raise CheckpointError(
            f"{key!r} is not a bundled model ({sorted(BUNDLED)}), an existing path, or a hub repo id (owner/name)"
        )
    from flexitok.io.hub import download_repo

    return load_pretrained(download_repo(repo))
