"""How the token budget an image needs follows its content: complexity measures (mean gradient magnitude, PNG
bits per pixel), their rank correlation with the k found by :func:`flexitok.codec.adaptive.search_k`, and a
Markdown batch report (``flexitok encode --target ... --report``)."""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from flexitok.codec.adaptive import METRICS, AdaptiveResult, QualityTarget
from flexitok.errors import InvalidInputError
from flexitok.utils.files import atomic_write_bytes


def gradient_magnitude(image: Tensor) -> float:
    """Mean gradient magnitude of the luma of ``image [3,H,W]`` in [-1, 1] (luma scaled to [0, 1])."""
    x = (image.float().clamp(-1, 1) + 1) / 2
    luma = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    gy = luma[1:, :-1] - luma[:-1, :-1]
    gx = luma[:-1, 1:] - luma[:-1, :-1]
    return float(torch.sqrt(gx**2 + gy**2).mean())


def png_bits_per_pixel(image: Tensor) -> float:
    """Size of ``image [3,H,W]`` in [-1, 1] as a maximally compressed 8-bit PNG, in bits per pixel."""
    x = ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    buf = io.BytesIO()
    Image.fromarray(x, mode="RGB").save(buf, format="PNG", optimize=True, compress_level=9)
    return 8.0 * buf.tell() / (x.shape[0] * x.shape[1])


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when fewer than 3 pairs or a side is constant."""
    if len(a) != len(b):
        raise InvalidInputError(f"spearman needs equally long sequences, got {len(a)} and {len(b)}")
    if len(a) < 3:
        return math.nan
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else math.nan


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


# ---------------------------------------------------------------------------- batch report
@dataclass
class ReportRow:
    """One image of a batch report."""

    name: str
    result: AdaptiveResult
    gradient: float
    png_bpp: float
    ftok_bytes: int | None = None


def render_report(rows: Sequence[ReportRow], target: QualityTarget, n_registers: int, model_name: str) -> str:
    """A Markdown report: per-image k and complexity, summary statistics, and rank correlations of the needed k
    with each complexity measure (positive = busier images need more tokens)."""
    if not rows:
        raise InvalidInputError("a report needs at least one image")
    ks = [r.result.k for r in rows]
    met = sum(r.result.met for r in rows)
    grads = [r.gradient for r in rows]
    bpps = [r.png_bpp for r in rows]
    lines = [
        "# Adaptive token budget report",
        "",
        f"- model: `{model_name}` ({n_registers} tokens max)",
        f"- target: `{target}` ({METRICS[target.metric][1]})",
        f"- images: {len(rows)}; target met for {met} (the others use all {n_registers} tokens)",
        f"- chosen k: mean {statistics.fmean(ks):.1f}, median {statistics.median(ks):g}, min {min(ks)}, max {max(ks)}",
        "",
        "## How the needed k follows image complexity",
        "",
        "| complexity measure | Spearman correlation with k |",
        "|---|---|",
        f"| mean gradient magnitude | {_fmt(spearman(grads, ks))} |",
        f"| PNG bits per pixel | {_fmt(spearman(bpps, ks))} |",
        "",
    ]
    if len(rows) >= 3:
        lines += [
            "Images split into thirds by PNG bits per pixel:",
            "",
            "| third | PNG bpp range | mean k |",
            "|---|---|---|",
        ]
        order = sorted(range(len(rows)), key=lambda i: bpps[i])
        thirds = [order[i * len(order) // 3 : (i + 1) * len(order) // 3] for i in range(3)]
        for label, idx in zip(("simplest", "middle", "busiest"), thirds, strict=True):
            lo, hi = bpps[idx[0]], bpps[idx[-1]]
            lines.append(f"| {label} | {lo:.2f} - {hi:.2f} | {statistics.fmean(ks[i] for i in idx):.1f} |")
        lines.append("")
    lines += [
        "## Per image",
        "",
        f"| image | k | {target.metric} at k | met | mean gradient | PNG bpp | .ftok bytes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = "" if r.ftok_bytes is None else str(r.ftok_bytes)
        lines.append(
            f"| {r.name} | {r.result.k} | {r.result.score:.4g} | {'yes' if r.result.met else 'no'} | "
            f"{r.gradient:.4f} | {r.png_bpp:.2f} | {size} |"
        )
    lines += [
        "",
        "k is found by binary search over 1..N with a fixed decoder seed, assuming quality grows monotonically with k"
        " (approximately true for a trained model); see `flexitok.codec.adaptive`.",
        "",
    ]
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.2f}"


def write_report(path: str | Path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode("utf-8"))
