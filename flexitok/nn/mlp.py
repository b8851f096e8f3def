"""Feed-forward layers."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from flexitok.nn.fastpath import eager_inference
from flexitok.nn.packed import PackedLinearsMixin, packed_weight


class GatedMLP(PackedLinearsMixin):
    """SwiGLU feed-forward without biases: ``fc2(silu(fc1(x)) * fc3(x))``.

    ``fc1`` and ``fc3`` are packed (:mod:`flexitok.nn.packed`): in eager inference they run as one
    ``[D -> 2 hidden]`` matmul followed by an in-place SiLU and product; otherwise the plain computation.
    """

    _packed_groups = (("fc1", "fc3"),)

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        self.fc3 = nn.Linear(dim, hidden, bias=False)
        self._pack_all()

    def forward(self, x: Tensor) -> Tensor:
        """``[..., D] -> [..., D]``."""
        if eager_inference():
            h = F.linear(x, packed_weight((self.fc1, self.fc3)))  # [..., 2 hidden]
            return self.fc2(F.silu(h[..., : self.hidden], inplace=True).mul_(h[..., self.hidden :]))
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))
