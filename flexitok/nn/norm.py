"""Normalisation layers."""

from __future__ import annotations

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


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation ``x * (1 + scale) + shift`` (all broadcastable to ``[B, S, D]``)."""
    return x * (1.0 + scale) + shift
