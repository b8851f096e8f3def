"""The FlexTok encoder (resampler): latent patches + learned registers -> FSQ inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flexitok.config import EncoderConfig
from flexitok.nn.blocks import Transformer
from flexitok.nn.embeddings import PatchEmbed, PositionEmbedding
from flexitok.nn.masks import block_mask
from flexitok.nn.norm import Fp32LayerNorm
from flexitok.nn.precision import precision_override


class RegisterHead(nn.Module):
    """LayerNorm (no affine; optional) then a linear map to the FSQ dimension.

    ``width_mult`` != 1 is the official muP readout (``use_mup_readout=True``, mup's ``MuReadout``): the input
    is divided by ``dim / base_width`` before the linear map. ``dtype`` is the official ``dtype_override``.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        eps: float,
        bias: bool = True,
        width_mult: float = 1.0,
        norm: bool = True,
        dtype: str | None = None,
    ) -> None:
        super().__init__()
        self.norm: nn.Module = Fp32LayerNorm(eps) if norm else nn.Identity()
        self.proj = nn.Linear(dim, dim_out, bias=bias)
        self.width_mult = width_mult
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        with precision_override(x.device.type, self.dtype):
            x = self.norm(x)
            return self.proj(x / self.width_mult if self.width_mult != 1.0 else x)


def readout_width_mult(dim: int, base_width: int | None) -> float:
    """mup's width multiplier of a readout layer with fan-in ``dim`` (1 when muP is off)."""
    return 1.0 if base_width is None else dim / base_width


class FlexTokEncoder(nn.Module):
    """Latents ``[B, C, h, w]`` -> continuous register latents ``[B, N, d]``.

    Sequence layout ``[patches (row-major) | registers]`` with the causal-last mask by default: patches attend to
    patches only, register i attends to all patches and to registers 0..i, which orders the registers coarse to
    fine. Any latent size works: the position table is cropped (or stretched, see :class:`PositionEmbedding`).
    """

    def __init__(self, cfg: EncoderConfig, latent_channels: int, latent_size: tuple[int, int], fsq_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        tcfg = cfg.transformer
        grid = (latent_size[0] // cfg.patch_size[0], latent_size[1] // cfg.patch_size[1])
        table = cfg.posemb_grid or ((grid[0] * grid[1],) if cfg.flatten_patches else grid)
        self.patch_embed = PatchEmbed(latent_channels, tcfg.dim if cfg.patch_proj else None, cfg.patch_size)
        self.posemb = PositionEmbedding(tcfg.dim, table, cfg.posemb_type, cfg.posemb_scaling)
        self.registers = nn.Parameter(torch.randn(cfg.n_registers, tcfg.dim) * 0.02)
        self.trunk = Transformer(tcfg)
        width_mult = readout_width_mult(tcfg.dim, cfg.mup_base_width)
        self.head = RegisterHead(
            tcfg.dim, fsq_dim, tcfg.norm_eps, cfg.head_bias, width_mult, norm=cfg.head_norm, dtype=cfg.head_dtype
        )

    @property
    def n_registers(self) -> int:
        """Registers, hence tokens, per image at inference (official ``n_eval``)."""
        return self.cfg.n_tokens

    def register_tokens(self, n: int) -> Tensor:
        """The ``n`` register inputs ``[n, D]``: the first ``n`` learned ones (``nested``), or the learned ones
        average-pooled to ``n`` (``avg_pool``; the identity when ``n`` is the full count)."""
        if self.cfg.register_ordering == "avg_pool":
            return F.adaptive_avg_pool1d(self.registers.T, n).T
        return self.registers[:n]

    def embed_patches(self, latents: Tensor) -> Tensor:
        """``[B, C, h, w]`` -> position-embedded patch tokens ``[B, P, D]`` in row-major order."""
        patches = self.patch_embed(latents)  # [B, h', w', D]
        if self.cfg.flatten_patches:  # official flatten_patches: one raster sequence, 1-D table
            return self.posemb(patches.flatten(1, 2))
        return self.posemb(patches).flatten(1, 2)

    def forward(self, latents: Tensor) -> Tensor:
        """``[B, C, h, w]`` -> ``[B, N, d]``."""
        patches = self.embed_patches(latents)
        b, p = patches.shape[:2]
        n = self.n_registers
        regs = self.register_tokens(n).to(patches.dtype).unsqueeze(0).expand(b, -1, -1)
        x = torch.cat([patches, regs], dim=1)
        x, _ = self.trunk(x, block_mask(self.cfg.mask_mode, p, n, device=x.device))
        return self.head(x[:, p:])
