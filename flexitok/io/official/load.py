"""Loading an official-format ``model.safetensors`` into a :class:`flexitok.FlexTok`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from flexitok.errors import CheckpointError
from flexitok.io.official.config import config_from_official
from flexitok.io.official.keys import _dropped, _rename, _to_ours, official_key_map
from flexitok.io.official.metadata import parse_metadata, read_safetensors_header
from flexitok.io.official.vae import resolve_vae_config
from flexitok.utils.weights import WeightsFile, materialize_parameters, parameters_on_meta, state_dict_problems

if TYPE_CHECKING:
    from flexitok.models.flextok import FlexTok


def _stream_load(model: nn.Module, path: Path, cfg: dict[str, Any]) -> None:
    """Read the checkpoint into ``model`` (built by :func:`parameters_on_meta`) one tensor at a time, each
    straight into the model's dtype, after checking names and shapes as strictly as
    :func:`flexitok.utils.weights.load_state_dict_strict`: loading needs about the weights' bytes."""
    rules = official_key_map(cfg)
    own = model.state_dict()
    with WeightsFile(path) as f:
        names: dict[str, str] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        unknown = []
        for key, shape in f.header.shapes.items():
            if _dropped(key, cfg):
                continue
            new = _rename(key, rules)
            if new is None:
                unknown.append(key)
                continue
            names[new] = key
            # The official decoder register table is [1, 1, D, N]; ours is [N, D] (see _to_ours).
            shapes[new] = shape[-1:] + shape[-2:-1] if new == "decoder.register_posemb" else shape
        problems = []
        if unknown:
            problems.append(f"{len(unknown)} official keys have no flexitok counterpart (e.g. {unknown[:5]})")
        problems += state_dict_problems({k: tuple(v.shape) for k, v in own.items()}, shapes)
        if problems:
            raise CheckpointError(f"official checkpoint {path} does not match the model: " + "; ".join(problems))
        materialize_parameters(model)  # in the dtype they were built in
        own = model.state_dict()
        for new, key in names.items():
            if new == "decoder.register_posemb":
                with torch.no_grad():
                    own[new].copy_(_to_ours(new, f.read_tensor(key)))
            else:
                f.read_into(key, own[new])


def load_official(
    path: str | Path,
    vae_config: dict | str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    mup_base_width: int | tuple[int, int] | None = None,
    dtype: torch.dtype | None = None,
) -> FlexTok:
    """Build a :class:`flexitok.FlexTok` from an official-format ``model.safetensors``.

    The VAE architecture comes from ``vae_config`` (a diffusers config dict, or a folder/file with
    ``config.json``), else from ``<checkpoint dir>/<hf_hub_path>/config.json``, else the hub, else the weights
    (the official base SD-VAE when ``hf_hub_path`` is unset). ``image_size`` sets the native size (the
    ``detokenize`` default); ``mup_base_width`` is needed only for muP readout heads. ``dtype`` (default float32)
    builds the model in that dtype; the model is built without weights and each tensor is read into it
    in that dtype, so loading needs about the weights' bytes in that dtype.
    """
    from flexitok.models.flextok import FlexTok

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    tensors, meta = read_safetensors_header(path)
    if "_target_" in meta:
        cfg = parse_metadata(meta)
    elif (path.parent / "config.json").is_file():
        # Hub repos saved with PyTorchModelHubMixin keep the Hydra config in config.json instead.
        try:
            blob = json.loads((path.parent / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"cannot parse {path.parent / 'config.json'}: {e}") from e
        cfg = blob.get("config", blob) if isinstance(blob, dict) else {}
        cfg.setdefault("_target_", "flextok.flextok_wrapper.FlexTok")
    else:
        raise CheckpointError(f"{path} has no official FlexTok config (no '_target_' metadata and no config.json)")
    if cfg["_target_"] not in ("flextok.flextok_wrapper.FlexTok", "flextok.flextok_wrapper.FlexTokFromHub"):
        raise CheckpointError(f"{path} is a {cfg['_target_']!r} checkpoint, not a FlexTok one")
    vcfg = resolve_vae_config(path, cfg, tensors, vae_config)
    config = config_from_official(cfg, vcfg, image_size, mup_base_width)
    config.vae.pretrained = None  # the weights come from the checkpoint itself
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype or torch.float32)  # buffers computed in the target dtype, as before
    try:
        with parameters_on_meta():  # no memory and no random init for weights the checkpoint overwrites
            model = FlexTok(config)
    finally:
        torch.set_default_dtype(default)
    _stream_load(model, path, cfg)
    return model.to(dtype) if dtype is not None else model
