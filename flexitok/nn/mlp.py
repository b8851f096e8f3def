"""Feed-forward layers."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from flexitok.nn.fastpath import eager_inference
from flexitok.nn.packed import PackedLinearsMixin, packed_weight


class GatedMLP(PackedLinearsMixin):
    """SwiGLU feed-forward without biases: ``fc2(silu(fc1(x)) * fc3(x))``.

    ``fc1`` and ``fc3`` are packed (:mod:`flexitok.nn.packed`) and computed as one ``[D -> 2 hidden]`` matmul.
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
        h = F.linear(x, packed_weight((self.fc1, self.fc3)))  # [..., 2 hidden]
        a, b = h[..., : self.hidden], h[..., self.hidden :]
        if eager_inference():
            return self.fc2(F.silu(a, inplace=True).mul_(b))
        return self.fc2(F.silu(a) * b)
