"""Codec baselines for rate-distortion comparisons: byte budgets are respected and quality follows the rate."""

from __future__ import annotations

import pytest
import torch

from flexitok.errors import InvalidInputError
from flexitok.eval.rate_distortion import (
    codec_at_budget,
    codec_curve,
    encode,
    encode_within,
    plot_rate_distortion,
    smallest_file,
    tensor_to_pil,
    token_bytes,
)


def _images(n: int = 2, size: int = 32) -> torch.Tensor:
    # Smooth gradients plus texture: compressible, but not to nothing.
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    base = torch.stack([xx, yy, xx * yy])
    return (base[None] * 0.7 + 0.3 * torch.rand(n, 3, size, size, generator=g)).clamp(-1, 1)


@pytest.mark.parametrize("codec", ["JPEG", "WEBP"])
def test_encode_within_respects_the_budget_and_picks_the_best_quality(codec):
    img = tensor_to_pil(_images(1)[0])
    floor = len(encode(img, codec, 0))
    assert encode_within(img, codec, floor - 1) is None
    budget = floor + 400
    data, q = encode_within(img, codec, budget)
    assert len(data) <= budget
    if q < 100:  # the next quality up no longer fits
        assert len(encode(img, codec, q + 1)) > budget


@pytest.mark.parametrize("codec", ["JPEG", "WEBP"])
def test_codec_points_improve_with_bytes(codec):
    images = _images()
    lo, hi = codec_curve(images, codec, qualities=(5, 90))
    assert hi.bytes > lo.bytes and hi.psnr > lo.psnr and hi.ssim > lo.ssim
    assert codec_at_budget(images, codec, int(smallest_file(images, codec)) // 2) is None
    point = codec_at_budget(images, codec, int(hi.bytes) + 50)
    assert point is not None and point.bytes <= hi.bytes + 50 and point.n == 2


def test_token_bytes_and_plot():
    assert token_bytes(32, 1000) == 40 and token_bytes(1, 64000) == 2 and token_bytes(3, 1000) == 4
    images = _images()
    series = {"JPEG": codec_curve(images, "JPEG", (10, 50)), "WEBP": codec_curve(images, "WEBP", (10, 50))}
    plot = plot_rate_distortion(series, "test")
    assert plot.size[0] > plot.size[1] > 100
    with pytest.raises(InvalidInputError):
        encode(tensor_to_pil(images[0]), "GIF", 50)
    with pytest.raises(InvalidInputError):
        plot_rate_distortion({})
