"""Stage-0 autoencoders: a diffusers ``AutoencoderKL`` wrapper and an identity (pixel-space) stand-in."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from flexitok.config import VAEConfig
from flexitok.nn.precision import PRECISIONS, precision_override

if TYPE_CHECKING:
    from diffusers import AutoencoderKL


class Autoencoder(nn.Module):
    """What FlexTok needs from a stage-0 autoencoder: images [B, 3, H, W] <-> scaled latents [B, C, h, w]."""

    def encode(self, images: Tensor, generator: torch.Generator | None = None, sample: bool | None = None) -> Tensor:
        """``sample``: draw from the posterior (None = the config's ``sample_posterior``) or take its mean."""
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError


class IdentityAE(Autoencoder):
    """Pixel-space "VAE": latents are the [-1, 1] image itself, scaled by ``scaling_factor``."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def encode(self, images: Tensor, generator: torch.Generator | None = None, sample: bool | None = None) -> Tensor:
        """``[B, 3, H, W]`` -> ``[B, 3, H, W]`` (there is no posterior to sample)."""
        return images * self.cfg.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        return latents / self.cfg.scaling_factor


def load_autoencoder_kl(path: str) -> AutoencoderKL:
    """``AutoencoderKL.from_pretrained(path)`` without diffusers' notice about the optional ``accelerate`` package
    (it asks for ``low_cpu_mem_usage``, which needs accelerate; without it the load is the same, so ask for it only
    when accelerate is there)."""
    from diffusers import AutoencoderKL
    from diffusers.utils import is_accelerate_available

    return AutoencoderKL.from_pretrained(path, low_cpu_mem_usage=is_accelerate_available())


class DiffusersVAE(Autoencoder):
    """Wraps ``diffusers.AutoencoderKL``; the module is stored as ``.vae`` (official key prefix ``vae.vae.*``).

    ``encode`` returns the posterior mean, or a posterior sample when ``sample`` (default: the config's
    ``sample_posterior``, the official wrapper's option) is set, multiplied by the scaling factor; ``decode``
    divides by it first.
    """

    def __init__(self, cfg: VAEConfig, vae: AutoencoderKL | None = None) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        self.cfg = cfg
        if vae is None:
            if cfg.diffusers_config is not None:
                vae = AutoencoderKL.from_config(_clean_diffusers_config(cfg.diffusers_config))
            elif cfg.pretrained is not None:
                vae = load_autoencoder_kl(cfg.pretrained)
            else:
                raise ValueError("VAEConfig(kind='diffusers') needs diffusers_config or pretrained")
        self.vae: AutoencoderKL = vae
        if cfg.latent_channels != self.vae.config.latent_channels:
            raise ValueError(
                f"VAE config says {cfg.latent_channels} latent channels, the AutoencoderKL has "
                f"{self.vae.config.latent_channels}"
            )

    def _input(self, x: Tensor) -> Tensor:
        # The official dtype_override casts the input to it; float32 means "no autocast" (the weights' dtype).
        name = self.cfg.dtype_override
        if name is None:
            return x
        dtype = PRECISIONS[name]
        return x.to(self.vae.dtype if dtype == torch.float32 else dtype)

    def encode(self, images: Tensor, generator: torch.Generator | None = None, sample: bool | None = None) -> Tensor:
        """``[B, 3, H, W]`` in [-1, 1] -> scaled latents ``[B, C, H/f, W/f]``."""
        with precision_override(images.device.type, self.cfg.dtype_override):
            posterior = self.vae.encode(self._input(images)).latent_dist
            sample = self.cfg.sample_posterior if sample is None else sample
            z = posterior.sample(generator) if sample else posterior.mode()
            return z * self.cfg.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents ``[B, C, h, w]`` -> images ``[B, 3, h*f, w*f]`` (not clamped)."""
        with precision_override(latents.device.type, self.cfg.dtype_override):
            return self.vae.decode(self._input(latents) / self.cfg.scaling_factor).sample


def sd_style_vae_config(latent_channels: int = 16) -> dict[str, Any]:
    """The diffusers ``AutoencoderKL`` architecture of the SD/SDXL VAEs (4 blocks, 8x downsampling) with
    ``latent_channels`` channels: what the official wrapper builds when it names no hub VAE, and the architecture
    of the paper's stage-0 VAEs ("similar to the SDXL VAE"; 16 channels)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": latent_channels,
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "act_fn": "silu",
    }


def _clean_diffusers_config(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def build_vae(cfg: VAEConfig) -> Autoencoder:
    return IdentityAE(cfg) if cfg.kind == "identity" else DiffusersVAE(cfg)


def estimate_vae_size(cfg: VAEConfig) -> int:
    """Approximate parameter count of the VAE ``cfg`` describes, from its diffusers config alone (0 for the
    identity VAE; 0 when only a ``pretrained`` location is known)."""
    d = cfg.diffusers_config
    if cfg.kind == "identity" or d is None:
        return 0
    channels = [int(c) for c in d.get("block_out_channels", (64,))]
    layers = int(d.get("layers_per_block", 1))
    lat, rgb = int(d.get("latent_channels", cfg.latent_channels)), int(d.get("in_channels", 3))

    def resnet(c_in: int, c_out: int) -> int:
        return 9 * c_in * c_out + 9 * c_out * c_out + (c_in * c_out if c_in != c_out else 0)

    total = 9 * rgb * channels[0] + 9 * channels[0] * rgb  # conv_in (encoder), conv_out (decoder)
    c_prev = channels[0]
    for i, c in enumerate(channels):  # encoder down blocks (+ downsampling conv except the last)
        total += resnet(c_prev, c) + (layers - 1) * resnet(c, c) + (9 * c * c if i < len(channels) - 1 else 0)
        c_prev = c
    for i, c in enumerate(reversed(channels)):  # decoder up blocks: one more resnet each
        total += resnet(c_prev, c) + layers * resnet(c, c) + (9 * c * c if i < len(channels) - 1 else 0)
        c_prev = c
    top = channels[-1]
    total += 2 * (2 * resnet(top, top) + 4 * top * top)  # mid blocks (two resnets + attention), both halves
    total += 9 * top * 2 * lat + 9 * lat * top + 4 * lat * lat  # to/from latents, quant convs
    return total
