"""Boolean attention masks (True = may attend) for the resampler."""

from __future__ import annotations

import torch
from torch import Tensor


def causal_last_mask(n_patches: int, n_registers: int, device: torch.device | str | None = None) -> Tensor:
    """``[S, S]`` mask for ``[patches | registers]``: patches see patches; register i sees all patches and
    registers 0..i."""
    s = n_patches + n_registers
    mask = torch.zeros(s, s, dtype=torch.bool, device=device)
    mask[:, :n_patches] = True
    mask[n_patches:, n_patches:] = torch.ones(n_registers, n_registers, dtype=torch.bool, device=device).tril()
    return mask
