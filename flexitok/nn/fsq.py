"""Finite scalar quantization (Mentzer et al., 2023) with the official FlexTok id mapping."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flexitok.errors import InvalidInputError


class FSQ(nn.Module):
    """Quantize each of ``d = len(levels)`` channels to ``levels[j]`` values in [-1, 1].

    Token ids are mixed-radix numbers whose first level is the least significant digit. The bounding function
    ``tanh(z + shift) * half - offset`` keeps even levels symmetric around the rounding grid.
    """

    # Buffers registered in __init__ (declared for the type checker).
    _levels: Tensor
    _half: Tensor
    _offset: Tensor
    _shift: Tensor
    _half_width: Tensor
    _basis: Tensor

    def __init__(self, levels: tuple[int, ...] | list[int], eps: float = 1e-3) -> None:
        super().__init__()
        self.levels_tuple = tuple(int(x) for x in levels)
        lv = torch.tensor(self.levels_tuple, dtype=torch.float64)
        half = (lv - 1) * (1 + eps) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)
        basis = torch.cumprod(torch.tensor((1, *self.levels_tuple[:-1]), dtype=torch.int64), 0)
        # Derived from `levels`: never stored in checkpoints.
        self.register_buffer("_levels", lv.to(torch.int64), persistent=False)
        self.register_buffer("_half", half.float(), persistent=False)
        self.register_buffer("_offset", offset.float(), persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half).float(), persistent=False)
        self.register_buffer("_half_width", (lv // 2).float(), persistent=False)
        self.register_buffer("_basis", basis, persistent=False)

    @property
    def dim(self) -> int:
        return len(self.levels_tuple)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels_tuple)

    def bound(self, z: Tensor) -> Tensor:
        """Squash ``z [..., d]`` into the open interval each level rounds over (in level units)."""
        return torch.tanh(z + self._shift) * self._half - self._offset

    def quantize(self, z: Tensor) -> Tensor:
        """``z [..., d]`` -> quantized codes ``[..., d]`` in [-1, 1] with straight-through gradients."""
        bounded = self.bound(z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / self._half_width

    def codes_to_ids(self, codes: Tensor) -> Tensor:
        """``codes [..., d]`` in [-1, 1] -> ids ``[...]`` (int64)."""
        digits = torch.round(codes * self._half_width + self._half_width).to(torch.int64)
        return (digits * self._basis).sum(-1)

    def ids_to_codes(self, ids: Tensor) -> Tensor:
        """``ids [...]`` (int64 in [0, codebook_size)) -> codes ``[..., d]`` (float32)."""
        self.check_ids(ids)
        digits = (ids.unsqueeze(-1) // self._basis) % self._levels
        return (digits.float() - self._half_width) / self._half_width

    def check_ids(self, ids: Tensor) -> None:
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
            raise InvalidInputError(f"token ids must be an integer tensor, got dtype {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise InvalidInputError(
                f"token ids must lie in [0, {self.codebook_size}); got min {int(ids.min())}, max {int(ids.max())}"
            )

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``z [B, N, d]`` -> (codes ``[B, N, d]`` with straight-through gradients, ids ``[B, N]``)."""
        codes = self.quantize(z)
        return codes, self.codes_to_ids(codes.detach())
