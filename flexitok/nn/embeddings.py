"""Patch, position and timestep embeddings."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from flexitok.config import PosEmbScaling, PosEmbType


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


def resize_table(table: Tensor, grid: Sequence[int]) -> Tensor:
    """Bilinear resize of a ``[1, D, h, w]`` table to ``grid`` with ``align_corners=True`` (corner positions
    map onto corner positions), the official ``posemb_scaling='interpolate'`` rule."""
    if tuple(table.shape[2:]) == tuple(grid):
        return table
    return F.interpolate(table, size=tuple(grid), mode="bilinear", align_corners=True)


class PositionEmbedding(nn.Module):
    """Adds a position embedding to a grid of tokens, like the official ``PositionalEmbeddingAdder``.

    ``sizes`` is the table size in patches: ``(rows, cols)``, or ``(n,)`` for a 1-D (raster-order) table.

    * ``kind="sincos"``: the fixed 2-D table of :func:`sincos_2d_table` (a persistent buffer, because official
      checkpoints store it).
    * ``kind="learnable_sum"`` / ``"learnable_prod"``: learned per-axis vectors stored in the official layout
      ``[n_axes, 1, D, size]`` (all axes the same size); a 2-D table is their broadcast sum / product.
    * ``scaling="absolute"``: a smaller grid uses the top-left corner of the table (no interpolation).
      ``scaling="interpolate"``: the whole table is always resized to the grid (:func:`resize_table`).

    A grid larger than an ``absolute`` table is outside what the table was trained for: the axes that fit
    are cropped and the table is stretched over the larger ones with :func:`resize_table`. Callers warn about
    it (:meth:`flexitok.FlexTok.check_image_size`); this module just computes.
    """

    table: Tensor

    def __init__(
        self, dim: int, sizes: Sequence[int], kind: PosEmbType = "sincos", scaling: PosEmbScaling = "absolute"
    ) -> None:
        super().__init__()
        self.kind, self.scaling = kind, scaling
        sizes = tuple(int(s) for s in sizes)
        if kind == "sincos":
            if len(sizes) != 2:
                raise ValueError(f"a sin-cos position table is 2-D, got sizes {sizes}")
            # Persistent so official checkpoints (which store the table) load strictly.
            self.register_buffer("table", sincos_2d_table(dim, *sizes))
        elif kind in ("learnable_sum", "learnable_prod"):
            if len(set(sizes)) != 1 or len(sizes) not in (1, 2):
                raise ValueError(f"a learned position table needs 1 or 2 equal sizes, got {sizes}")
            self.table = nn.Parameter(torch.empty(len(sizes), 1, dim, sizes[0]))
            nn.init.trunc_normal_(self.table, std=0.02)
        else:
            raise ValueError(f"unknown position embedding kind {kind!r}")
        if scaling not in ("absolute", "interpolate"):
            raise ValueError(f"unknown position embedding scaling {scaling!r}")
        if scaling == "interpolate" and len(sizes) != 2:
            raise ValueError("posemb_scaling='interpolate' needs a 2-D table")
        self.sizes = sizes

    def full(self) -> Tensor:
        """The whole table ``[1, D, *sizes]``."""
        if self.kind == "sincos":
            return self.table
        if self.table.shape[0] == 1:
            return self.table[0]
        rows, cols = self.table[0].unsqueeze(-1), self.table[1].unsqueeze(-2)  # [1, D, S, 1], [1, D, 1, S]
        return rows * cols if self.kind == "learnable_prod" else rows + cols

    def fits(self, grid: Sequence[int]) -> bool:
        """True when ``grid`` lies inside the table (no stretching needed)."""
        return len(grid) == len(self.sizes) and all(g <= s for g, s in zip(grid, self.sizes, strict=True))

    def for_grid(self, grid: Sequence[int]) -> Tensor:
        """The embedding for a ``grid`` of tokens, ``[1, D, *grid]``."""
        grid = tuple(int(g) for g in grid)
        if len(grid) != len(self.sizes):
            raise ValueError(f"a {len(self.sizes)}-D position table cannot embed a {len(grid)}-D grid {grid}")
        table = self.full()
        if self.scaling == "interpolate":
            return resize_table(table, grid)
        crop = tuple(slice(None, min(g, s)) for g, s in zip(grid, self.sizes, strict=True))
        table = table[(slice(None), slice(None)) + crop]
        if self.fits(grid):
            return table
        if len(grid) != 2:
            raise ValueError(f"{grid[0]} positions exceed the 1-D position table of {self.sizes[0]}")
        return resize_table(table, grid)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, *grid, D]`` -> ``[B, *grid, D]``."""
        return x + self.for_grid(x.shape[1:-1])[0].movedim(0, -1).to(x.dtype)


class PatchEmbed(nn.Module):
    """Cut ``[B, C, H, W]`` into ``ph x pw`` patches flattened as (row, col, channel) and embed them linearly
    (``dim=None``: no projection, the flattened patches are the tokens, as the official ``dim=None``)."""

    def __init__(self, channels: int, dim: int | None, patch_size: tuple[int, int]) -> None:
        super().__init__()
        self.patch_size = patch_size
        n_in = channels * patch_size[0] * patch_size[1]
        self.proj: nn.Module = nn.Linear(n_in, dim) if dim is not None else nn.Identity()

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
