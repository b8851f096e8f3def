"""The FlexTok encoder (resampler): latent patches + learned registers -> FSQ inputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flexitok.config import EncoderConfig
from flexitok.nn.blocks import Transformer
from flexitok.nn.embeddings import PatchEmbed, SinCosPosEmb2D
from flexitok.nn.masks import causal_last_mask
from flexitok.nn.norm import Fp32LayerNorm


class RegisterHead(nn.Module):
    """LayerNorm (no affine) then a linear map to the FSQ dimension."""

    def __init__(self, dim: int, dim_out: int, eps: float, bias: bool = True) -> None:
        super().__init__()
        self.norm = Fp32LayerNorm(eps)
        self.proj = nn.Linear(dim, dim_out, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.norm(x))


class FlexTokEncoder(nn.Module):
    """Latents ``[B, C, h, w]`` -> continuous register latents ``[B, N, d]``.

    Sequence layout ``[patches (row-major) | registers]`` with the causal-last mask: patches attend to patches
    only, register i attends to all patches and to registers 0..i, which orders the registers coarse to fine.
    """

    def __init__(self, cfg: EncoderConfig, latent_channels: int, latent_size: tuple[int, int], fsq_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        tcfg = cfg.transformer
        grid = (latent_size[0] // cfg.patch_size[0], latent_size[1] // cfg.patch_size[1])
        self.patch_embed = PatchEmbed(latent_channels, tcfg.dim, cfg.patch_size)
        self.posemb = SinCosPosEmb2D(tcfg.dim, cfg.posemb_grid or grid)
        self.registers = nn.Parameter(torch.randn(cfg.n_registers, tcfg.dim) * 0.02)
        self.trunk = Transformer(tcfg)
        self.head = RegisterHead(tcfg.dim, fsq_dim, tcfg.norm_eps, bias=cfg.head_bias)

    @property
    def n_registers(self) -> int:
        return self.cfg.n_registers

    def forward(self, latents: Tensor) -> Tensor:
        """``[B, C, h, w]`` -> ``[B, N, d]``."""
        patches = self.posemb(self.patch_embed(latents)).flatten(1, 2)  # [B, P, D]
        b, p = patches.shape[:2]
        regs = self.registers.to(patches.dtype).unsqueeze(0).expand(b, -1, -1)
        x = torch.cat([patches, regs], dim=1)
        mask = causal_last_mask(p, self.n_registers, device=x.device)
        x, _ = self.trunk(x, mask)
        return self.head(x[:, p:])
