"""1D rotary position embeddings (RoPE) over channel halves, as in LlamaGen's GPT."""

from __future__ import annotations

import torch
from torch import Tensor


def rope_tables(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables for 1D rotary embeddings. positions [T] -> (cos, sin) each [T, head_dim / 2]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (first half, second half). x [B, H, T, hd], cos/sin [T, hd/2] -> [B, H, T, hd]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)
