"""Codec baselines for rate-distortion comparisons: byte budgets are respected and quality follows the rate."""

from __future__ import annotations

import pytest
import torch

from flexitok.errors import InvalidInputError
from flexitok.eval.rate_distortion import (
    RDPoint,
    codec_at_budget,
    codec_curve,
    encode,
    encode_within,
    interpolate,
    jpeg_payload_bytes,
    plot_rate_distortion,
    smallest_file,
    tensor_to_pil,
    thumbnail_curve,
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


def test_jpeg_payload_is_the_scan_data_without_headers():
    img = tensor_to_pil(_images(1, 64)[0])
    lo, hi = encode(img, "JPEG", 5), encode(img, "JPEG", 90)
    # The headers (quantisation and optimised Huffman tables) cost hundreds of bytes at any quality.
    assert len(lo) - jpeg_payload_bytes(lo) > 150 and len(hi) - jpeg_payload_bytes(hi) > 150
    assert 0 < jpeg_payload_bytes(lo) < jpeg_payload_bytes(hi)
    # Scan data ends where the EOI marker starts.
    sos = hi.index(b"\xff\xda")
    header = int.from_bytes(hi[sos + 2 : sos + 4], "big")
    assert jpeg_payload_bytes(hi) == len(hi) - 2 - (sos + 2 + header)
    with pytest.raises(InvalidInputError, match="JPEG"):
        jpeg_payload_bytes(encode(img, "WEBP", 50))
    with pytest.raises(InvalidInputError, match="JPEG only"):
        codec_curve(_images(1), "WEBP", (10,), count="payload")
    payload = codec_curve(_images(1, 64), "JPEG", (5, 90), count="payload")
    assert [p.bytes for p in payload] == [jpeg_payload_bytes(lo), jpeg_payload_bytes(hi)]


def test_interpolate_is_linear_in_log_bytes_inside_the_scan_only():
    curve = [RDPoint("q=90", 400.0, 30.0, 0.9, 1), RDPoint("q=10", 100.0, 20.0, 0.5, 1)]
    assert interpolate(curve, 100.0) == (20.0, 0.5) and interpolate(curve, 400.0) == (30.0, 0.9)
    p, s = interpolate(curve, 200.0)  # halfway in log-bytes
    assert p == pytest.approx(25.0) and s == pytest.approx(0.7)
    assert interpolate(curve, 99.0) is None and interpolate(curve, 401.0) is None


def test_thumbnail_baseline_costs_three_bytes_per_pixel_and_improves_with_size():
    images = _images(2, 32)
    pts = thumbnail_curve(images, (1, 4, 16))
    assert [p.bytes for p in pts] == [3.0, 48.0, 768.0] and [p.label for p in pts] == ["1x1", "4x4", "16x16"]
    assert pts[0].psnr < pts[1].psnr < pts[2].psnr and pts[0].ssim < pts[2].ssim
    with pytest.raises(InvalidInputError):
        thumbnail_curve(images, (0,))
