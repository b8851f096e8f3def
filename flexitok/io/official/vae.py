"""The VAE architecture of an official checkpoint: from its config.json, the hub, or read off the weights."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor

from flexitok.errors import CheckpointError
from flexitok.io.official.options import option
from flexitok.models.vae import sd_style_vae_config


def infer_vae_config(tensors: dict[str, Tensor], norm_num_groups: int | None = None) -> dict[str, Any]:
    """Rebuild a diffusers AutoencoderKL config from ``vae.vae.*`` weights.

    Everything but ``norm_num_groups`` (GroupNorm has no group count in its weights) is read off the tensors;
    that one defaults to the diffusers default 32, or the largest count that divides every block width when
    32 does not. Pass the VAE's ``config.json`` when it is available.
    """
    p = "vae.vae."
    if f"{p}encoder.conv_in.weight" not in tensors:
        raise CheckpointError("the checkpoint holds no VAE weights (vae.vae.*)")
    blocks = sorted(
        {int(m.group(1)) for k in tensors if (m := re.match(rf"{re.escape(p)}encoder\.down_blocks\.(\d+)\.", k))}
    )
    channels = [int(tensors[f"{p}encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in blocks]
    layers = len({k.split(".")[5] for k in tensors if k.startswith(f"{p}encoder.down_blocks.0.resnets.")})
    if norm_num_groups is None:
        norm_num_groups = math.gcd(32, *channels)
    return {
        "in_channels": int(tensors[f"{p}encoder.conv_in.weight"].shape[1]),
        "out_channels": int(tensors[f"{p}decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(blocks),
        "up_block_types": ["UpDecoderBlock2D"] * len(blocks),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "latent_channels": int(tensors[f"{p}decoder.conv_in.weight"].shape[1]),
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
