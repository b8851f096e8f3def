"""Normalisation layers and the adaLN modulate / gate operations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Fp32LayerNorm(nn.Module):
    """LayerNorm without affine parameters, always computed in float32 (stable under bf16 autocast)."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """``[..., D] -> [..., D]`` normalised over the last dimension, returned in the input dtype."""
        return F.layer_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no bias), computed in float32. ``[..., D] -> [..., D]``."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation ``x * (1 + scale) + shift`` (all broadcastable to ``[B, S, D]``)."""
    return x * (1.0 + scale) + shift


def group_slices(seq_len: int, split: int, groups: int) -> list[slice]:
    """Token ranges of the adaLN groups: everything (1 group) or ``[:split]`` and ``[split:]`` (2 groups)."""
    if groups == 1:
        return [slice(0, seq_len)]
    if groups == 2:
        return [slice(0, split), slice(split, seq_len)]
    raise ValueError(f"adaLN supports 1 or 2 token groups, got {groups}")


def modulate_groups_(h: Tensor, shift: Tensor, scale: Tensor, split: int) -> Tensor:
    """In-place per-group adaLN modulation ``h * (1 + scale) + shift``, one fused kernel per group, without
    materialising per-token ``[B, S, D]`` shift/scale tensors. Inference only (no autograd through ``out=``).

    ``h [B, S, D]`` (a fresh normalised tensor; overwritten and returned), ``shift``/``scale [B, G, D]``: group 0
    modulates tokens ``< split``, group 1 the rest (G = 1: all tokens share group 0).
    """
    scale1 = scale + 1.0  # [B, G, D]: tiny
    for g, sl in enumerate(group_slices(h.shape[1], split, shift.shape[1])):
        seg = h[:, sl]
        torch.addcmul(shift[:, g : g + 1], seg, scale1[:, g : g + 1], out=seg)
    return h


def gated_residual_(x: Tensor, y: Tensor, gate: Tensor, split: int) -> Tensor:
    """``x + gate * y`` per adaLN group (groups as in :func:`modulate_groups_`), written into ``y`` (a fresh branch
    output) and returned; ``x`` is not modified. Inference only."""
    for g, sl in enumerate(group_slices(x.shape[1], split, gate.shape[1])):
        seg = y[:, sl]
        torch.addcmul(x[:, sl], seg, gate[:, g : g + 1], out=seg)
    return y
