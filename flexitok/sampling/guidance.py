"""Classifier-free guidance and adaptive projected guidance (APG, Sadat et al. 2024)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

GuidanceScale = float | Callable[[float], float]


def cfg_combine(v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
    """Plain CFG: ``v_u + g (v_c - v_u)``."""
    return v_uncond + scale * (v_cond - v_uncond)


@dataclass
class APG:
    """Adaptive projected guidance with a per-sample momentum buffer.

    Per sample (norms over all of C, H, W): the difference ``v_c - v_u`` is accumulated with ``momentum``,
    clipped to ``norm_threshold``, and only its component orthogonal to ``v_c`` is added (``eta`` scales the
    parallel part; 0 drops it). The buffer persists across the steps of one sampling run: create one per run.
    """

    momentum: float = -0.5
    norm_threshold: float = 2.5
    eta: float = 0.0
    _buffer: Tensor | None = None

    def __call__(self, v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
        diff = v_cond - v_uncond
        if self.momentum != 0:
            self._buffer = diff if self._buffer is None else diff + self.momentum * self._buffer
            diff = self._buffer
        dims = tuple(range(1, diff.ndim))
        if self.norm_threshold > 0:
            norm = diff.norm(p=2, dim=dims, keepdim=True).clamp_min(1e-12)
            diff = diff * torch.clamp(self.norm_threshold / norm, max=1.0)
        # The projection is done in float64 (as the official implementation does) to avoid cancellation.
        d64, c64 = diff.double(), v_cond.double()
        # clamp: an untrained (adaLN-zero) decoder predicts exactly zero velocity.
        unit = c64 / c64.norm(p=2, dim=dims, keepdim=True).clamp_min(1e-12)
        parallel = (d64 * unit).sum(dim=dims, keepdim=True) * unit
        orthogonal = (d64 - parallel).to(diff.dtype)
        update = orthogonal + self.eta * parallel.to(diff.dtype)
        return v_cond + (scale - 1.0) * update
