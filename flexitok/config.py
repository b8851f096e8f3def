"""Typed configuration for FlexTok models.

Every model in flexitok is built from one :class:`FlexTokConfig`. The config is plain data (dataclasses of
ints, floats, bools and tuples) so it round-trips through JSON (``to_dict``; reading back, with validation, is
:func:`flexitok.utils.config_json.config_from_json`) and can be built from the official Hydra metadata (see
:mod:`flexitok.io.official`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

VAEKind = Literal["diffusers", "identity"]


@dataclass
class TransformerConfig:
    """Trunk hyper-parameters shared by the encoder and the decoder.

    ``mlp_hidden`` defaults to ``int(2 * mlp_ratio * dim / 3)`` (gated SiLU MLP). The attention logit scale
    defaults to ``attn_scale_base / head_dim`` (the official muP-style 8 / head_dim); set
    ``attn_scale_base=None`` for the usual ``1 / sqrt(head_dim)``.
    """

    dim: int = 768
    depth: int = 12
    head_dim: int = 64
    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None
    qk_norm: bool = True
    attn_scale_base: float | None = 8.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.dim % self.head_dim != 0:
            raise ValueError(f"dim={self.dim} is not a multiple of head_dim={self.head_dim}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")

    @property
    def num_heads(self) -> int:
        return self.dim // self.head_dim

    @property
    def hidden(self) -> int:
        return self.mlp_hidden if self.mlp_hidden is not None else int(2 * self.mlp_ratio * self.dim / 3)

    @property
    def attn_scale(self) -> float:
        if self.attn_scale_base is None:
            return 1.0 / math.sqrt(self.head_dim)
        return self.attn_scale_base / self.head_dim


@dataclass
class VAEConfig:
    """Stage-0 autoencoder.

    ``kind="diffusers"`` wraps a diffusers ``AutoencoderKL`` built from ``diffusers_config`` (a diffusers config
    dict) or loaded from ``pretrained`` (a hub id or local folder). ``kind="identity"`` works directly on pixels:
    latents are the [-1, 1] image itself (``latent_channels`` must be 3, ``downsample`` 1).
    """

    kind: VAEKind = "diffusers"
    latent_channels: int = 16
    downsample: int = 8
    scaling_factor: float = 1.0
    sample_posterior: bool = False
    diffusers_config: dict[str, Any] | None = None
    pretrained: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("diffusers", "identity"):
            raise ValueError(f"unknown VAE kind {self.kind!r}; expected 'diffusers' or 'identity'")
        if self.kind == "identity" and (self.latent_channels != 3 or self.downsample != 1):
            raise ValueError("the identity (pixel) VAE needs latent_channels=3 and downsample=1")


@dataclass
class EncoderConfig:
    """Resampler: latent patches + registers -> FSQ inputs."""

    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    patch_size: tuple[int, int] = (2, 2)
    n_registers: int = 256
    posemb_grid: tuple[int, int] | None = None  # sin-cos table size; None = the model's patch grid
    head_bias: bool = True


@dataclass
class DecoderConfig:
    """Rectified-flow decoder: [noised latent patches | registers] -> velocity."""

    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    patch_size: tuple[int, int] = (2, 2)
    posemb_grid: tuple[int, int] | None = None
    adaln_expansion: int = 2  # 2: separate modulation for patches and registers; 1: shared
    time_freq_dim: int = 256
    max_timestep: float = 1.0
    learned_null_cond: bool = True  # False: the null condition is a zero vector


@dataclass
class FlexTokConfig:
    """Everything needed to build a :class:`flexitok.FlexTok`."""

    image_size: tuple[int, int] = (256, 256)
    vae: VAEConfig = field(default_factory=VAEConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    fsq_levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)

    def __post_init__(self) -> None:
        h, w = self.image_size  # JSON gives lists
        self.image_size = (h, w)
        self.fsq_levels = tuple(self.fsq_levels)
        h, w = self.latent_size
        for name, ps in (("encoder", self.encoder.patch_size), ("decoder", self.decoder.patch_size)):
            if h % ps[0] or w % ps[1]:
                raise ValueError(f"{name} patch size {ps} does not divide the latent grid {(h, w)}")
        if any(level < 2 for level in self.fsq_levels):
            raise ValueError(f"every FSQ level must be >= 2, got {self.fsq_levels}")

    @property
    def n_registers(self) -> int:
        return self.encoder.n_registers

    @property
    def vocab_size(self) -> int:
        return math.prod(self.fsq_levels)

    @property
    def latent_size(self) -> tuple[int, int]:
        d = self.vae.downsample
        h, w = self.image_size
        if h % d or w % d:
            raise ValueError(f"image size {self.image_size} is not divisible by the VAE downsampling {d}")
        return h // d, w // d

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _paper_preset(enc_depth: int, dec_depth: int) -> FlexTokConfig:
    # The paper's sizes: width = 64 x depth, head_dim 64, 256 registers, 256x256 images, 16-channel SD3-style VAE.
    return FlexTokConfig(
        image_size=(256, 256),
        vae=VAEConfig(kind="diffusers", latent_channels=16, downsample=8),
        encoder=EncoderConfig(transformer=TransformerConfig(dim=64 * enc_depth, depth=enc_depth), n_registers=256),
        decoder=DecoderConfig(transformer=TransformerConfig(dim=64 * dec_depth, depth=dec_depth)),
    )


def tiny_config(image_size: int = 32, n_registers: int = 16, dim: int = 64, depth: int = 2) -> FlexTokConfig:
    """A small pixel-space model for tests and CPU experiments (no VAE, 4x4 pixel patches)."""
    return FlexTokConfig(
        image_size=(image_size, image_size),
        vae=VAEConfig(kind="identity", latent_channels=3, downsample=1),
        encoder=EncoderConfig(
            transformer=TransformerConfig(dim=dim, depth=depth, head_dim=32), patch_size=(4, 4), n_registers=n_registers
        ),
        decoder=DecoderConfig(transformer=TransformerConfig(dim=dim, depth=depth, head_dim=32), patch_size=(4, 4)),
    )


PRESETS: dict[str, Any] = {
    "d12-d12": lambda: _paper_preset(12, 12),
    "d18-d18": lambda: _paper_preset(18, 18),
    "d18-d28": lambda: _paper_preset(18, 28),
    "tiny": tiny_config,
}


def preset(name: str) -> FlexTokConfig:
    """Return a fresh config for a named preset (``d12-d12``, ``d18-d18``, ``d18-d28``, ``tiny``)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
