"""The VAE architecture of an official checkpoint: from its config.json, the hub, or read off the weights."""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from flexitok.errors import CheckpointError
from flexitok.io.official.options import option
from flexitok.models.vae import sd_style_vae_config


def _vae_prefix(tensors: Mapping[str, Any]) -> str:
    """The key prefix of the AutoencoderKL weights: ``vae.vae.`` inside an official checkpoint, none in a bare
    diffusers ``diffusion_pytorch_model.safetensors``."""
    for prefix in ("vae.vae.", ""):
        if f"{prefix}encoder.conv_in.weight" in tensors:
            return prefix
    raise CheckpointError("the checkpoint holds no VAE weights (no vae.vae.encoder.conv_in.weight)")


def _indices(tensors: Mapping[str, Any], prefix: str) -> list[int]:
    """The sorted numeric indices right after ``prefix`` (e.g. the blocks of ``...down_blocks.``)."""
    pat = re.compile(rf"{re.escape(prefix)}(\d+)\.")
    return sorted({int(m.group(1)) for k in tensors if (m := pat.match(k))})


def infer_vae_config(tensors: Mapping[str, Any], norm_num_groups: int | None = None) -> dict[str, Any]:
    """Rebuild a diffusers AutoencoderKL config from its weights (``vae.vae.*`` keys of an official checkpoint, or
    the bare keys of a diffusers state dict). Values only need ``.shape`` (meta tensors or safetensors slices do).

    Read off the tensors: in/out channels, block widths and count, resnets per block, latent channels, whether
    the mid-blocks have attention and whether the quant convs exist. The GroupNorm group count is not in the
    weights (a GroupNorm weight has one entry per channel): it defaults to the diffusers default 32, or the largest
    count dividing every block width when 32 does not; pass the VAE's ``config.json`` value when available.
    """
    p = _vae_prefix(tensors)

    def shape(key: str) -> tuple[int, ...]:
        if p + key not in tensors:
            raise CheckpointError(f"the VAE weights lack {p + key}: not a diffusers AutoencoderKL state dict")
        return tuple(tensors[p + key].shape)

    blocks = _indices(tensors, f"{p}encoder.down_blocks.")
    if blocks != list(range(len(blocks))) or not blocks:
        raise CheckpointError(f"the VAE's encoder down blocks are numbered {blocks}, expected 0..n-1")
    channels = [shape(f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0] for i in blocks]
    # Resnet indices sit right after "resnets." (the encoder has layers_per_block per block, the decoder one more).
    layers = len(_indices(tensors, f"{p}encoder.down_blocks.0.resnets."))
    up_layers = len(_indices(tensors, f"{p}decoder.up_blocks.0.resnets."))
    if up_layers != layers + 1:
        raise CheckpointError(
            f"the VAE encoder has {layers} resnets per block but its decoder {up_layers} (expected {layers + 1})"
        )
    if norm_num_groups is None:
        norm_num_groups = math.gcd(32, *channels)
    return {
        "in_channels": shape("encoder.conv_in.weight")[1],
        "out_channels": shape("decoder.conv_out.weight")[0],
        "down_block_types": ["DownEncoderBlock2D"] * len(blocks),
        "up_block_types": ["UpDecoderBlock2D"] * len(blocks),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "latent_channels": shape("decoder.conv_in.weight")[1],
        "norm_num_groups": norm_num_groups,
        "mid_block_add_attention": any(k.startswith(f"{p}encoder.mid_block.attentions.") for k in tensors),
        "use_quant_conv": f"{p}quant_conv.weight" in tensors,
        "use_post_quant_conv": f"{p}post_quant_conv.weight" in tensors,
    }


_VAE_ARCH_KEYS = ("block_out_channels", "down_block_types", "latent_channels")


def official_base_vae_config(latent_channels: int) -> dict[str, Any]:
    """The AutoencoderKL the official wrapper builds when ``hf_hub_path`` is unset (an SD-style f8 VAE)."""
    return {**sd_style_vae_config(latent_channels), "sample_size": 1024}


def resolve_vae_config(
    path: Path, cfg: dict[str, Any], tensors: dict[str, Tensor], vae_config: dict | str | Path | None
) -> dict[str, Any]:
    if isinstance(vae_config, dict):
        if any(k in vae_config for k in _VAE_ARCH_KEYS):
            return dict(vae_config)
        # A partial dict (e.g. {"norm_num_groups": 8}) overrides what the weights cannot tell.
        return {**infer_vae_config(tensors), **vae_config}
    candidates = []
    if vae_config is not None:
        candidates.append(Path(vae_config))
    hub = option(cfg["vae"], "hf_hub_path")
    if hub is None and vae_config is None:
        return official_base_vae_config(int(option(cfg["vae"], "latent_channels")))
    if isinstance(hub, str):
        candidates.append(path.parent / hub)  # the official fixture stores a path relative to the checkpoint
    for c in candidates:
        f = c / "config.json" if c.is_dir() else c
        if f.is_file():
            return json.loads(f.read_text())
    if hub and "/" in str(hub) and not str(hub).startswith("."):
        try:  # a hub repo id: fetch only its config (needs network)
            from huggingface_hub import hf_hub_download

            return json.loads(Path(hf_hub_download(str(hub), "config.json")).read_text())
        except Exception:  # offline or unknown repo: fall back to the weights
            pass
    warnings.warn(
        "no VAE config found: the VAE architecture is inferred from the weights, guessing norm_num_groups "
        "(GroupNorm weights do not record it); pass vae_config={'norm_num_groups': G} or the VAE's config.json",
        stacklevel=3,
    )
    return infer_vae_config(tensors)
