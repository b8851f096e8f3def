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
PosEmbType = Literal["sincos", "learnable_sum", "learnable_prod"]
PosEmbScaling = Literal["absolute", "interpolate"]
MaskMode = Literal["full", "causal", "causal_last"]
RegisterOrdering = Literal["nested", "avg_pool"]
Precision = Literal["fp32", "float32", "bf16", "bfloat16", "fp16", "float16"]
_PRECISIONS = ("fp32", "float32", "bf16", "bfloat16", "fp16", "float16")


def _check_precision(where: str, value: str | None) -> None:
    if value is not None and value not in _PRECISIONS:
        raise ValueError(f"{where} must be one of {list(_PRECISIONS)} or null, got {value!r}")


@dataclass
class TransformerConfig:
    """Trunk hyper-parameters shared by the encoder and the decoder.

    ``mlp_hidden`` defaults to ``int(2 * int(mlp_ratio * dim) / 3)`` (gated SiLU MLP; the official rounding). The attention logit scale
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
        return self.mlp_hidden if self.mlp_hidden is not None else int(2 * int(self.mlp_ratio * self.dim) / 3)

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
    dtype_override: Precision | None = None  # official VAE precision: None = the caller's (autocast) context

    def __post_init__(self) -> None:
        _check_precision("vae.dtype_override", self.dtype_override)
        if self.kind not in ("diffusers", "identity"):
            raise ValueError(f"unknown VAE kind {self.kind!r}; expected 'diffusers' or 'identity'")
        if self.kind == "identity" and (self.latent_channels != 3 or self.downsample != 1):
            raise ValueError("the identity (pixel) VAE needs latent_channels=3 and downsample=1")


def _check_posemb(where: str, kind: str, scaling: str, grid: tuple[int, ...] | None, flat: bool) -> None:
    if kind not in ("sincos", "learnable_sum", "learnable_prod"):
        raise ValueError(f"{where}.posemb_type must be sincos, learnable_sum or learnable_prod, got {kind!r}")
    if scaling not in ("absolute", "interpolate"):
        raise ValueError(f"{where}.posemb_scaling must be absolute or interpolate, got {scaling!r}")
    if flat and (kind == "sincos" or scaling == "interpolate"):
        raise ValueError(f"{where}.flatten_patches needs a learned 1-D table with absolute scaling")
    if grid is not None and len(grid) != (1 if flat else 2):
        raise ValueError(f"{where}.posemb_grid must have {1 if flat else 2} entries, got {grid}")
    if grid is not None and kind != "sincos" and len(set(grid)) != 1:
        raise ValueError(f"{where}.posemb_grid of a learned table must be square, got {grid}")


@dataclass
class EncoderConfig:
    """Resampler: latent patches + registers -> FSQ inputs.

    The options below the first five mirror official constructor options (docs/official-checkpoints.md):
    ``posemb_type`` / ``posemb_scaling`` (``PositionalEmbeddingAdder``), ``flatten_patches`` (``PatchEmbedder``:
    patches form one raster-order sequence with a 1-D learned table), ``register_ordering`` and ``n_eval``
    (``Registers1D``: how many registers, hence tokens, inference uses and how they are taken from the
    ``n_registers`` learned ones), ``mask_mode`` (``BlockWiseSequencePacker``), ``mup_base_width``
    (``LinearHead(use_mup_readout=True)``: the head divides its input by ``dim / mup_base_width``),
    ``head_norm`` / ``head_dtype`` (``LinearHead`` ``norm_layer`` present / ``dtype_override``), ``patch_proj``
    (``PatchEmbedder``: False = ``dim=None``, raw patches are the tokens).
    """

    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    patch_size: tuple[int, int] = (2, 2)
    n_registers: int = 256
    posemb_grid: tuple[int, ...] | None = None  # position table size; None = the model's patch grid
    head_bias: bool = True
    posemb_type: PosEmbType = "sincos"
    posemb_scaling: PosEmbScaling = "absolute"
    flatten_patches: bool = False
    register_ordering: RegisterOrdering = "nested"
    n_eval: int | None = None  # None = n_registers
    mask_mode: MaskMode = "causal_last"
    mup_base_width: int | None = None  # None = plain linear head
    head_norm: bool = True
    head_dtype: Precision | None = None
    patch_proj: bool = True

    def __post_init__(self) -> None:
        _check_posemb("encoder", self.posemb_type, self.posemb_scaling, self.posemb_grid, self.flatten_patches)
        _check_precision("encoder.head_dtype", self.head_dtype)
        if self.register_ordering not in ("nested", "avg_pool"):
            raise ValueError(f"encoder.register_ordering must be nested or avg_pool, got {self.register_ordering!r}")
        if self.n_eval is not None and not 1 <= self.n_eval <= self.n_registers:
            raise ValueError(f"encoder.n_eval must lie in 1..{self.n_registers}, got {self.n_eval}")
        if self.mask_mode not in ("full", "causal", "causal_last"):
            raise ValueError(f"encoder.mask_mode must be full, causal or causal_last, got {self.mask_mode!r}")
        if self.mup_base_width is not None and self.mup_base_width < 1:
            raise ValueError(f"encoder.mup_base_width must be >= 1, got {self.mup_base_width}")

    @property
    def n_tokens(self) -> int:
        """Tokens per image at inference."""
        return self.n_eval or self.n_registers


@dataclass
class DecoderConfig:
    """Rectified-flow decoder: [noised latent patches | registers] -> velocity.

    ``posemb_type``, ``posemb_scaling``, ``mask_mode`` and ``mup_base_width`` mirror the official options as in
    :class:`EncoderConfig`; ``register_posemb_len`` is the length of the learned register position table when it
    is longer than the register count (official ``max_sizes``; only the first ``n_registers`` rows are used).
    Head options as in :class:`EncoderConfig`, plus ``head_bias`` / ``head_adaln_bias`` (``ToPatchesLinearHead``
    ``proj_bias`` / ``adaLN_bias``), ``from_codes_bias`` / ``from_codes_dtype`` (``LinearLayer``),
    ``mask_truncated`` (``MaskedNestedDropout``: False = ``eval_keep_k_read_key=None``, positions past keep_k
    keep their id-0 codes instead of the mask token) and ``null_single_token`` (``LearnedNullCond``
    ``replace_with_single_token``: the null condition is one token instead of N).
    """

    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    patch_size: tuple[int, int] = (2, 2)
    posemb_grid: tuple[int, ...] | None = None
    adaln_expansion: int = 2  # 2: separate modulation for patches and registers; 1: shared
    time_freq_dim: int = 256
    max_timestep: float = 1.0
    learned_null_cond: bool = True  # False: the null condition is a zero vector
    posemb_type: PosEmbType = "sincos"
    posemb_scaling: PosEmbScaling = "absolute"
    mask_mode: MaskMode = "full"
    mup_base_width: int | None = None
    register_posemb_len: int | None = None  # None = n_registers
    head_norm: bool = True
    head_dtype: Precision | None = None
    head_bias: bool = True
    head_adaln_bias: bool = True
    from_codes_bias: bool = True
    from_codes_dtype: Precision | None = None
    patch_proj: bool = True
    mask_truncated: bool = True
    null_single_token: bool = False

    def __post_init__(self) -> None:
        _check_posemb("decoder", self.posemb_type, self.posemb_scaling, self.posemb_grid, False)
        _check_precision("decoder.head_dtype", self.head_dtype)
        _check_precision("decoder.from_codes_dtype", self.from_codes_dtype)
        if self.mask_mode not in ("full", "causal", "causal_last"):
            raise ValueError(f"decoder.mask_mode must be full, causal or causal_last, got {self.mask_mode!r}")
        if self.mup_base_width is not None and self.mup_base_width < 1:
            raise ValueError(f"decoder.mup_base_width must be >= 1, got {self.mup_base_width}")


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
        for name, part in (("encoder", self.encoder), ("decoder", self.decoder)):
            patch_dim = self.vae.latent_channels * part.patch_size[0] * part.patch_size[1]
            if not part.patch_proj and patch_dim != part.transformer.dim:
                raise ValueError(
                    f"{name}.patch_proj=False needs transformer.dim = latent channels x patch area = {patch_dim}"
                )
        rp = self.decoder.register_posemb_len
        if rp is not None and rp < self.encoder.n_registers:
            raise ValueError(
                f"decoder.register_posemb_len {rp} is shorter than the {self.encoder.n_registers} registers"
            )
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


def default_ks(n_tokens: int) -> list[int]:
    """The coarse-to-fine ladder of token counts: 1, 2, 4, ... up to ``n_tokens`` (always included). The strip of
    the demo, ``--tokens all`` of the CLI and the default of the reconstruction evaluation
    (:meth:`flexitok.FlexTok.default_ks` for a model)."""
    ks, k = [], 1
    while k < n_tokens:
        ks.append(k)
        k *= 2
    return ks + [n_tokens]


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
