"""Image transforms without torchvision: PIL in, tensors in [-1, 1] out.

Every random choice draws from an optional ``torch.Generator`` so a transform is reproducible given a seed;
without one it uses torch's global RNG (which DataLoader seeds differently per worker).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

_RESAMPLE = Image.Resampling.BICUBIC


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, P, RGBA, LA, CMYK, I;16, F, ...) to 8-bit RGB.

    Transparent images are composited on white; 16-bit and float images are rescaled by their value range
    instead of being clipped.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.round().astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> FloatTensor [3, H, W] in [-1, 1]."""
    arr = np.asarray(to_rgb(img), dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()
    return x / 127.5 - 1.0


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def resize_shorter_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size``, then take the central ``size x size`` square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), _RESAMPLE)  # PIL widens the filter when downscaling (antialiased)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


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
    return img.resize((size, size), _RESAMPLE, box=box)


@dataclass
class ImageTransform:
    """PIL image (any mode/size) -> FloatTensor [3, size, size] in [-1, 1].

    ``random_resized_crop=None`` resizes the shorter side and centre-crops; otherwise it is the scale range of a
    random-resized crop with aspect range ``ratio``. ``hflip`` flips with probability 0.5. ``channel_shuffle`` is
    the probability of a random permutation of the RGB channels (colour augmentation: an autoencoder trained on a
    small photo set then reproduces colours it rarely saw, e.g. saturated greens); 0 draws no random numbers.
    """

    size: int
    random_resized_crop: tuple[float, float] | None = None
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = False
    channel_shuffle: float = 0.0

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        img = to_rgb(img)
        if self.random_resized_crop is None:
            img = resize_shorter_center_crop(img, self.size)
        else:
            img = random_resized_crop(img, self.size, self.random_resized_crop, self.ratio, generator)
        x = pil_to_tensor(img)
        if self.hflip and float(torch.rand((), generator=generator)) < 0.5:
            x = x.flip(-1)
        if self.channel_shuffle > 0 and float(torch.rand((), generator=generator)) < self.channel_shuffle:
            x = x[torch.randperm(3, generator=generator)]
        return x
