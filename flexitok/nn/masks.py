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


def block_mask(mode: str, n_first: int, n_last: int, device: torch.device | str | None = None) -> Tensor | None:
    """The official packer's per-image mask over ``[first | last]`` (e.g. patches | registers), or None for
    ``"full"`` attention. ``"causal"`` is causal over the whole sequence; ``"causal_last"`` see
    :func:`causal_last_mask`."""
    if mode == "full":
        return None
    if mode == "causal":
        s = n_first + n_last
        return torch.ones(s, s, dtype=torch.bool, device=device).tril()
    if mode == "causal_last":
        return causal_last_mask(n_first, n_last, device=device)
    raise ValueError(f"unknown mask mode {mode!r}")
