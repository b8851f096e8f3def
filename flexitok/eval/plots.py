"""Small figures for eval reports: metric-vs-k line plots and labelled image grids.

matplotlib is used when installed; otherwise a PIL-drawn plot keeps the feature dependency-free.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

_PANEL_W, _PANEL_H = 360, 260
_MARGIN_L, _MARGIN_R, _MARGIN_T, _MARGIN_B = 56, 16, 28, 36


def _finite_points(rows: Sequence[dict[str, Any]], metric: str) -> list[tuple[int, float]]:
    return [(int(r["k"]), float(r[metric])) for r in rows if math.isfinite(float(r.get(metric, math.nan)))]


def _x_position(k: int, ks: Sequence[int]) -> float:
    # Token counts are usually powers of two: a log axis spaces them evenly.
    lo, hi = math.log2(min(ks)), math.log2(max(ks))
    return 0.5 if hi == lo else (math.log2(k) - lo) / (hi - lo)


def _tick_label(value: float, step: float) -> str:
    # Enough decimals to tell neighbouring ticks apart, scientific notation for extreme magnitudes.
    decimals = max(0, 1 - math.floor(math.log10(step))) if step > 0 else 3
    if decimals > 5 or abs(value) >= 1e5:
        return f"{value:.3e}"
    return f"{value:.{decimals}f}"


def _pil_panel(points: list[tuple[int, float]], ks: Sequence[int], title: str) -> Image.Image:
    panel = Image.new("RGB", (_PANEL_W, _PANEL_H), "white")
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    x0, y0, x1, y1 = _MARGIN_L, _MARGIN_T, _PANEL_W - _MARGIN_R, _PANEL_H - _MARGIN_B
    draw.text((_PANEL_W // 2 - 4 * len(title), 6), title, fill="black", font=font)
    for k in ks:
        x = x0 + _x_position(k, ks) * (x1 - x0)
        draw.line((x, y1, x, y1 + 4), fill="black")
        draw.text((x - 3 * len(str(k)), y1 + 6), str(k), fill="black", font=font)
    draw.text(((x0 + x1) // 2 - 20, _PANEL_H - 14), "tokens k", fill="black", font=font)
    if not points:
        draw.rectangle((x0, y0, x1, y1), outline="black")
        draw.text((x0 + 10, (y0 + y1) // 2), "no finite values", fill="gray", font=font)
        return panel
    vals = [v for _, v in points]
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = y1 - (v - lo) / (hi - lo) * (y1 - y0)
        draw.line((x0 - 4, y, x0, y), fill="black")
        draw.line((x0 + 1, y, x1 - 1, y), fill=(230, 230, 230))
        draw.text((4, y - 6), _tick_label(v, (hi - lo) / 4), fill="black", font=font)
    draw.rectangle((x0, y0, x1, y1), outline="black")
    xy = [(x0 + _x_position(k, ks) * (x1 - x0), y1 - (v - lo) / (hi - lo) * (y1 - y0)) for k, v in points]
    if len(xy) > 1:
        draw.line(xy, fill=(31, 119, 180), width=2)
    for x, y in xy:
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(31, 119, 180))
    return panel


def _matplotlib_plot(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> Image.Image:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 2.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        pts = _finite_points(rows, metric)
        ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens k")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def plot_metrics_vs_k(
    rows: Sequence[dict[str, Any]], metrics: Sequence[str], use_matplotlib: bool | None = None
) -> Image.Image:
    """One panel per metric of value vs k (log2 x axis); rows are ``{"k": int, metric: float, ...}``."""
    ks = [int(r["k"]) for r in rows]
    if not ks:
        raise ValueError("nothing to plot: no rows")
    if use_matplotlib is None:
        try:
            import matplotlib  # noqa: F401

            use_matplotlib = True
        except ImportError:
            use_matplotlib = False
    if use_matplotlib:
        return _matplotlib_plot(rows, metrics)
    panels = [_pil_panel(_finite_points(rows, m), ks, m) for m in metrics]
    figure = Image.new("RGB", (_PANEL_W * len(panels), _PANEL_H), "white")
    for i, panel in enumerate(panels):
        figure.paste(panel, (i * _PANEL_W, 0))
    return figure


def image_grid(
    rows: Sequence[torch.Tensor], labels: Sequence[str] | None = None, pad: int = 2, min_size: int = 64
) -> Image.Image:
    """Rows of images ``[E, 3, H, W]`` in [-1, 1] -> one PIL grid, with an optional text label left of each row.

    Images smaller than ``min_size`` are enlarged by an integer factor (nearest neighbour) to stay visible."""
    if not rows:
        raise ValueError("no rows to draw")
    e = max(r.shape[0] for r in rows)
    h0, w0 = rows[0].shape[-2:]
    zoom = max(1, math.ceil(min_size / max(1, min(h0, w0))))
    h, w = h0 * zoom, w0 * zoom
    label_w = 56 if labels else 0
    grid = Image.new("RGB", (label_w + e * (w + pad) + pad, len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, row in enumerate(rows):
        arr = ((row.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        top = pad + i * (h + pad)
        if labels:
            draw.text((2, top + h // 2 - 6), labels[i], fill="black", font=font)
        for j, img in enumerate(arr):
            tile = Image.fromarray(img)
            if zoom > 1:
                tile = tile.resize((w, h), Image.Resampling.NEAREST)
            grid.paste(tile, (label_w + pad + j * (w + pad), top))
    return grid
