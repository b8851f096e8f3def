"""Rate-distortion against classical codecs: Pillow JPEG / WebP at a byte budget, and a bytes-vs-quality plot.

A FlexTok image costs ``ceil(k * bits / 8)`` payload bytes for its first k tokens (``bits = ceil(log2 vocab)``,
the ``.ftok`` packing without its container header). The codecs are compared on whole files as Pillow writes
them (headers included: that is what a JPEG or WebP of the image costs), at the highest quality whose file fits
the same budget, or on a quality scan interpolated at the same byte count. For JPEG, whose headers (quantisation
and Huffman tables, ~300+ bytes) dwarf a tiny image's data, :func:`jpeg_payload_bytes` also counts only the
entropy-coded scan data: the cost if the tables were shared out of band, as a tokenizer's weights are.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from flexitok.errors import InvalidInputError
from flexitok.eval.metrics import psnr, ssim

Codec = Literal["JPEG", "WEBP"]
CODECS: tuple[str, ...] = ("JPEG", "WEBP")
QUALITIES = tuple(range(0, 101))


def _check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise InvalidInputError(f"unknown codec {codec!r}; expected one of {', '.join(CODECS)}")


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` in [-1, 1] -> 8-bit RGB PIL image (the same rounding as saving a PNG)."""
    arr = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``[3, H, W]`` in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1) / 127.5 - 1.0


def encode(image: Image.Image, codec: str, quality: int) -> bytes:
    """The file Pillow writes for ``image`` at ``quality`` (JPEG with optimised Huffman tables; WebP lossy,
    slowest/best method)."""
    _check_codec(codec)
    buf = io.BytesIO()
    if codec == "JPEG":
        image.save(buf, format="JPEG", quality=int(quality), optimize=True)
    else:
        image.save(buf, format="WEBP", quality=int(quality), method=6)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def jpeg_payload_bytes(data: bytes) -> int:
    """Bytes of a baseline JPEG's entropy-coded scan data: everything after the start-of-scan header up to the
    end-of-image marker (SOI, APPn, DQT, SOF, DHT, SOS headers and EOI not counted)."""
    i = 2
    if data[:2] != b"\xff\xd8":
        raise InvalidInputError("not a JPEG file (no SOI marker)")
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise InvalidInputError(f"malformed JPEG: expected a marker at byte {i}")
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:  # SOS: the scan data follows its header
            end = len(data) - 2 if data[-2:] == b"\xff\xd9" else len(data)
            return end - (i + 2 + length)
        i += 2 + length
    raise InvalidInputError("malformed JPEG: no start-of-scan marker")


def encode_within(image: Image.Image, codec: str, max_bytes: int) -> tuple[bytes, int] | None:
    """(file, quality) at the highest quality whose file has at most ``max_bytes`` bytes; None if even the
    lowest quality is larger. File size grows with quality, so this is a binary search over 0..100."""
    lo, hi, best = 0, 100, None
    while lo <= hi:
        mid = (lo + hi) // 2
        data = encode(image, codec, mid)
        if len(data) <= max_bytes:
            best, lo = (data, mid), mid + 1
        else:
            hi = mid - 1
    return best


@dataclass
class RDPoint:
    """Mean bytes per image and mean PSNR / SSIM of one operating point (``n`` images, ``label`` e.g. k=8)."""

    label: str
    bytes: float
    psnr: float
    ssim: float
    n: int


def _score(recon: Sequence[torch.Tensor], originals: torch.Tensor) -> tuple[float, float]:
    rec = torch.stack(list(recon))
    return float(psnr(rec, originals).mean()), float(ssim(rec, originals).mean())


def codec_at_budget(originals: torch.Tensor, codec: str, max_bytes: int) -> RDPoint | None:
    """Every image of ``originals [B, 3, H, W]`` coded within ``max_bytes``; None when any image cannot be."""
    files = []
    for img in originals:
        hit = encode_within(tensor_to_pil(img), codec, max_bytes)
        if hit is None:
            return None
        files.append(hit[0])
    p, s = _score([pil_to_tensor(decode(f)) for f in files], originals)
    return RDPoint(f"<= {max_bytes} B", sum(len(f) for f in files) / len(files), p, s, len(files))


def codec_curve(
    originals: torch.Tensor,
    codec: str,
    qualities: Sequence[int] = (0, 5, 10, 20, 30, 50, 70, 90),
    count: Literal["file", "payload"] = "file",
) -> list[RDPoint]:
    """One :class:`RDPoint` per quality setting (same quality for every image). ``count="payload"`` (JPEG only)
    counts the entropy-coded data alone (:func:`jpeg_payload_bytes`) instead of the whole file."""
    if count == "payload" and codec != "JPEG":
        raise InvalidInputError("count='payload' is defined for JPEG only")
    size = jpeg_payload_bytes if count == "payload" else len
    points = []
    for q in qualities:
        files = [encode(tensor_to_pil(img), codec, q) for img in originals]
        p, s = _score([pil_to_tensor(decode(f)) for f in files], originals)
        points.append(RDPoint(f"q={q}", sum(size(f) for f in files) / len(files), p, s, len(files)))
    return points


def thumbnail_curve(originals: torch.Tensor, sides: Sequence[int] = (1, 2, 3, 4, 6, 8)) -> list[RDPoint]:
    """Raw-pixel baseline for tiny budgets: each image shrunk to ``side x side`` 8-bit RGB (``3 * side**2`` bytes,
    no header), then enlarged back with bicubic interpolation. ``originals [B, 3, H, W]`` in [-1, 1]."""
    points = []
    for side in sides:
        if side < 1:
            raise InvalidInputError(f"thumbnail sides must be >= 1, got {side}")
        recon = []
        for img in originals:
            pil = tensor_to_pil(img)
            small = pil.resize((side, side), Image.Resampling.BOX)
            recon.append(pil_to_tensor(small.resize(pil.size, Image.Resampling.BICUBIC)))
        p, s = _score(recon, originals)
        points.append(RDPoint(f"{side}x{side}", float(3 * side * side), p, s, len(originals)))
    return points


def interpolate(curve: Sequence[RDPoint], n_bytes: float) -> tuple[float, float] | None:
    """(PSNR, SSIM) of a quality scan at ``n_bytes``, linear in log-bytes between the two neighbouring points;
    None outside the scan's byte range (a codec cannot reach that size, or the scan stops short of it)."""
    pts = sorted(curve, key=lambda p: p.bytes)
    for a, b in zip(pts, pts[1:], strict=False):
        if a.bytes <= n_bytes <= b.bytes:
            t = 0.0 if b.bytes == a.bytes else math.log(n_bytes / a.bytes) / math.log(b.bytes / a.bytes)
            return a.psnr + t * (b.psnr - a.psnr), a.ssim + t * (b.ssim - a.ssim)
    return None


def smallest_file(originals: torch.Tensor, codec: str) -> float:
    """Mean size in bytes of the lowest-quality files (the least a codec can spend on these images)."""
    return sum(len(encode(tensor_to_pil(img), codec, 0)) for img in originals) / len(originals)


def token_bytes(k: int, vocab_size: int) -> int:
    """Payload bytes of k bit-packed tokens."""
    bits = max(1, math.ceil(math.log2(vocab_size)))
    return math.ceil(k * bits / 8)


_COLORS = {
    "FlexTok": (200, 40, 40),
    "JPEG": (40, 90, 200),
    "WEBP": (30, 150, 60),
    "JPEG-payload": (130, 170, 230),
    "thumbnail": (150, 150, 150),
}


def plot_rate_distortion(
    series: dict[str, list[RDPoint]], title: str = "", references: dict[str, tuple[float, float]] | None = None
) -> Image.Image:
    """Two panels (PSNR, SSIM) against bytes per image on a log axis, one line per series, the legend below.
    ``references``: horizontal dashed lines, name -> (PSNR, SSIM) (e.g. the stage-0 VAE's own reconstruction)."""
    font = ImageFont.load_default()
    references = references or {}
    w, h, ml, mr, mt, mb = 440, 320, 58, 16, 30, 40
    all_pts = [p for pts in series.values() for p in pts]
    if not all_pts:
        raise InvalidInputError("nothing to plot")
    xs = [math.log10(max(p.bytes, 1e-9)) for p in all_pts]
    xlo, xhi = math.floor(min(xs)), math.ceil(max(xs))
    names = list(series) + list(references)
    legend_h = 14 * ((len(names) + 1) // 2) + 10
    canvas = Image.new("RGB", (2 * w, h + 24 + legend_h), "white")
    for panel, metric in enumerate(("psnr", "ssim")):
        img = Image.new("RGB", (w, h), "white")
        d = ImageDraw.Draw(img)
        vals = [getattr(p, metric) for p in all_pts] + [r[panel] for r in references.values()]
        lo, hi = min(vals), max(vals)
        pad = 0.05 * (hi - lo or 1)
        lo, hi = lo - pad, hi + pad
        x0, y0, x1, y1 = ml, mt, w - mr, h - mb

        def pos(b: float, v: float, x0=x0, y0=y0, x1=x1, y1=y1, lo=lo, hi=hi) -> tuple[float, float]:
            x = x0 + (math.log10(max(b, 1e-9)) - xlo) / max(xhi - xlo, 1e-9) * (x1 - x0)
            return x, y1 - (v - lo) / (hi - lo) * (y1 - y0)

        d.rectangle((x0, y0, x1, y1), outline="black")
        for e in range(xlo, xhi + 1):
            for m in (1, 2, 5):
                b = m * 10**e
                if xlo <= math.log10(b) <= xhi:
                    x, _ = pos(b, lo)
                    d.line((x, y1, x, y1 + (5 if m == 1 else 2)), fill="black")
                    if m == 1 or xhi - xlo <= 3:  # label 2 and 5 only while they fit
                        d.text((x - 3 * len(str(b)), y1 + 7), str(b), fill="black", font=font)
        for i in range(5):
            v = lo + (hi - lo) * i / 4
            _, y = pos(10**xlo, v)
            d.line((x0 - 4, y, x0, y), fill="black")
            d.text((4, y - 5), f"{v:.3f}" if metric == "ssim" else f"{v:.1f}", fill="black", font=font)
        d.text(((x0 + x1) // 2 - 45, h - 16), "bytes per image", fill="black", font=font)
        d.text((x0, 8), "PSNR (dB)" if metric == "psnr" else "SSIM", fill="black", font=font)
        for ref in references.values():
            _, y = pos(10**xlo, ref[panel])
            for xa in range(int(x0), int(x1), 8):
                d.line((xa, y, min(xa + 4, x1), y), fill=(90, 90, 90))
        for name, pts in series.items():
            color = _COLORS.get(name.split()[0], (120, 120, 120))
            pts = sorted(pts, key=lambda p: p.bytes)
            xy = [pos(p.bytes, getattr(p, metric)) for p in pts]
            if len(xy) > 1:
                d.line(xy, fill=color, width=2)
            for x, y in xy:
                d.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=color)
        canvas.paste(img, (panel * w, 24))
    d = ImageDraw.Draw(canvas)
    d.text((10, 6), title, fill="black", font=font)
    for i, name in enumerate(names):
        x, y = 70 + (i % 2) * w, h + 30 + 14 * (i // 2)
        if name in series:
            color = _COLORS.get(name.split()[0], (120, 120, 120))
            d.line((x, y + 5, x + 18, y + 5), fill=color, width=2)
        else:
            color = (90, 90, 90)
            d.line((x, y + 5, x + 6, y + 5), fill=color)
            d.line((x + 12, y + 5, x + 18, y + 5), fill=color)
        d.text((x + 24, y), name, fill=color, font=font)
    return canvas
