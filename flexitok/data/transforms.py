"""Training image transforms without torchvision: PIL in, tensors in [-1, 1] out.

The conversion steps are the inference loader's (:mod:`flexitok.io.images`): EXIF orientation, mode conversion
to RGB (16-bit scaled by bit depth, transparency on white) and scaling (LANCZOS down, BICUBIC up). Without
augmentation a file gives exactly the pixels :func:`flexitok.io.images.load_image` gives.

Every random choice draws from an optional ``torch.Generator`` so a transform is reproducible given a seed;
without one it uses torch's global RNG (which DataLoader seeds differently per worker).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image

from flexitok.io import images
from flexitok.io.images import center_crop_resize, exif_transpose, resize_box, to_rgb

__all__ = [
    "ImageTransform",
    "pil_to_tensor",
    "random_resized_crop",
    "sample_resized_crop_box",
    "to_rgb",
]


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image of any mode -> FloatTensor [3, H, W] in [-1, 1] (converted by :func:`to_rgb` first)."""
    return images.pil_to_tensor(to_rgb(img))


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def sample_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """Sample a crop box (left, top, right, bottom) covering ``scale`` of the area with aspect in ``ratio``.

    Aspect ratios are sampled log-uniformly (the usual RandomResizedCrop recipe); after ``attempts`` misses it
    falls back to the largest central crop whose aspect is inside ``ratio``.
    """
    if not (0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale range must satisfy 0 < lo <= hi <= 1, got {scale}")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"aspect ratio range must satisfy 0 < lo <= hi, got {ratio}")
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_lo, log_hi, generator))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= width and 0 < ch <= height:
            left = int(torch.randint(0, width - cw + 1, (), generator=generator))
            top = int(torch.randint(0, height - ch + 1, (), generator=generator))
            return left, top, left + cw, top + ch
    in_ratio = width / height
    if in_ratio < ratio[0]:
        cw, ch = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        cw, ch = round(height * ratio[1]), height
    else:
        cw, ch = width, height
    left, top = (width - cw) // 2, (height - ch) // 2
    return left, top, left + cw, top + ch


def random_resized_crop(
    img: Image.Image,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> Image.Image:
    """Crop a random box (see :func:`sample_resized_crop_box`) and resize it to ``size x size``."""
    box = sample_resized_crop_box(img.size[0], img.size[1], scale, ratio, generator)
    return resize_box(img, (size, size), box)


@dataclass
class ImageTransform:
    """PIL image (any mode/size) -> FloatTensor [3, size, size] in [-1, 1].

    ``random_resized_crop=None`` takes the central square and resizes it, like
    :func:`flexitok.io.images.load_image`; otherwise it is the scale range of a random-resized crop with aspect
    range ``ratio``. ``hflip`` flips with probability 0.5. ``channel_shuffle`` is the probability of a random
    permutation of the RGB channels (colour augmentation for autoencoders trained on small photo sets); 0 draws
    no random numbers.
    """

    size: int
    random_resized_crop: tuple[float, float] | None = None
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = False
    channel_shuffle: float = 0.0

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        img = to_rgb(exif_transpose(img))
        if self.random_resized_crop is None:
            img = center_crop_resize(img, (self.size, self.size))
        else:
            img = random_resized_crop(img, self.size, self.random_resized_crop, self.ratio, generator)
        x = pil_to_tensor(img)
        if self.hflip and float(torch.rand((), generator=generator)) < 0.5:
            x = x.flip(-1)
        if self.channel_shuffle > 0 and float(torch.rand((), generator=generator)) < self.channel_shuffle:
            x = x[torch.randperm(3, generator=generator)]
        return x
