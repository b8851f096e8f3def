"""Patch, position and timestep embeddings."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn


def sincos_2d_table(dim: int, rows: int, cols: int) -> Tensor:
    """Fixed 2-D sin-cos table ``[1, dim, rows, cols]``.

    Channels are ``[sin(r w), cos(r w), sin(c w), cos(c w)]`` with ``w_k = 10000^(-k / (dim/4))``, the layout of
    the official checkpoints.
    """
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    q = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(q, dtype=torch.float64) / q))
    r = torch.arange(rows, dtype=torch.float64)[:, None] * omega  # [rows, q]
    c = torch.arange(cols, dtype=torch.float64)[:, None] * omega  # [cols, q]
    row_part = torch.cat([r.sin(), r.cos()], -1)[:, None, :].expand(rows, cols, 2 * q)
    col_part = torch.cat([c.sin(), c.cos()], -1)[None, :, :].expand(rows, cols, 2 * q)
    table = torch.cat([row_part, col_part], -1)  # [rows, cols, dim]
    return table.permute(2, 0, 1).unsqueeze(0).float().contiguous()


class SinCosPosEmb2D(nn.Module):
    """Adds a fixed 2-D sin-cos embedding; grids smaller than the table use its top-left corner."""

    table: Tensor  # [1, D, rows, cols] buffer

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        # Persistent so official checkpoints (which store the table) load strictly.
        self.register_buffer("table", sincos_2d_table(dim, *grid))

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, h, w, D]`` -> ``[B, h, w, D]``."""
        h, w = x.shape[1:3]
        if h > self.table.shape[2] or w > self.table.shape[3]:
            raise ValueError(f"patch grid {(h, w)} is larger than the position table {tuple(self.table.shape[2:])}")
        return x + self.table[0, :, :h, :w].permute(1, 2, 0).to(x.dtype)


class PatchEmbed(nn.Module):
    """Cut ``[B, C, H, W]`` into ``ph x pw`` patches flattened as (row, col, channel) and embed them linearly."""

    def __init__(self, channels: int, dim: int, patch_size: tuple[int, int]) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(channels * patch_size[0] * patch_size[1], dim)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, H/ph, W/pw, D]``."""
        ph, pw = self.patch_size
        return self.proj(rearrange(x, "b c (h ph) (w pw) -> b h w (ph pw c)", ph=ph, pw=pw))


def unpatchify(x: Tensor, patch_size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Inverse of the patch layout: ``[B, h*w, ph*pw*C]`` -> ``[B, C, h*ph, w*pw]``."""
    ph, pw = patch_size
    return rearrange(x, "b (h w) (ph pw c) -> b c (h ph) (w pw)", h=grid[0], w=grid[1], ph=ph, pw=pw)


class TimestepEmbedder(nn.Module):
    """``t [B]`` in [0, max_timestep] -> ``[B, D]`` via [cos | sin] features and a 2-layer SiLU MLP."""

    def __init__(self, dim: int, freq_dim: int = 256, max_timestep: float = 1.0, max_period: float = 256.0) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_scale = 1000.0 / max_timestep
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def features(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = (t.float() * self.time_scale)[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.features(t).to(next(self.mlp.parameters()).dtype))
