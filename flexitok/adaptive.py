"""Adaptive token budgets: the smallest number of tokens k that reconstructs an image to a quality target.

FlexTok tokens are ordered coarse to fine, so reconstruction quality grows with k. The search assumes it grows
*monotonically* and binary-searches k in ``1..N`` with the decoder, decoding every candidate from the same seeded
noise (so the search is deterministic and the chosen k reproduces exactly when decoded with the same seed and
settings). Quality is only approximately monotone in k (the flow decoder is stochastic and a random model is
not monotone at all), so the k found is the smallest k the bisection *visited* that meets the target: an even
smaller k may exist, and every k above the returned one is not guaranteed to meet it. When even all N tokens miss
the target, the result is N with ``met=False``.

Complexity measures (mean gradient magnitude, PNG bits per pixel) and a Markdown batch report show how the
needed k varies with image content.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from flexitok.errors import InvalidInputError
from flexitok.io.checkpoint import atomic_write_bytes

if TYPE_CHECKING:
    from flexitok.models.flextok import FlexTok

# metric name -> (higher is better, description)
METRICS: dict[str, tuple[bool, str]] = {
    "psnr": (True, "PSNR in dB (higher is better)"),
    "ssim": (True, "SSIM in [-1, 1] (higher is better)"),
    "lpips-like": (False, "cosine distance of EfficientNet-Lite0 features (lower is better)"),
}

Scorer = Callable[[Tensor, Tensor], float]  # (reference [1,3,H,W], reconstruction [1,3,H,W]) in [-1, 1] -> score


@dataclass(frozen=True)
class QualityTarget:
    """A quality goal such as ``psnr=24``: ``metric`` (a key of :data:`METRICS`) and the threshold ``value``."""

    metric: str
    value: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise InvalidInputError(f"unknown quality metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if not math.isfinite(self.value):
            raise InvalidInputError(f"the target value must be a finite number, got {self.value}")

    @classmethod
    def parse(cls, text: str) -> QualityTarget:
        """``"psnr=24"`` / ``"ssim=0.8"`` / ``"lpips-like=0.05"`` -> a target."""
        name, sep, value = text.partition("=")
        if not sep:
            raise InvalidInputError(f"--target must look like METRIC=VALUE (e.g. psnr=24 or ssim=0.8), got {text!r}")
        try:
            number = float(value)
        except ValueError:
            raise InvalidInputError(f"--target value must be a number, got {value!r} in {text!r}") from None
        return cls(name.strip().lower(), number)

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric][0]

    def is_met(self, score: float) -> bool:
        return score >= self.value if self.higher_is_better else score <= self.value

    def __str__(self) -> str:
        return f"{self.metric}={self.value:g}"


def build_scorer(metric: str, device: torch.device | str = "cpu") -> Scorer:
    """A function ``(reference [1,3,H,W], reconstruction [1,3,H,W]) -> float`` for ``metric``."""
    from flexitok.eval.metrics import psnr, ssim

    if metric == "psnr":
        return lambda ref, rec: float(psnr(ref.cpu(), rec.cpu())[0])
    if metric == "ssim":
        return lambda ref, rec: float(ssim(ref.cpu(), rec.cpu())[0])
    if metric == "lpips-like":
        from flexitok.eval.features import build_extractor

        extractor = build_extractor("efflite0", device)
        # The reference is scored against many reconstructions: keep (reference, its features) for the last one.
        last: list[tuple[Tensor, Tensor]] = []

        def feature_distance(ref: Tensor, rec: Tensor) -> float:
            if not last or last[0][0] is not ref:
                last[:] = [(ref, extractor(ref.to(device)))]
            return float(1.0 - F.cosine_similarity(last[0][1], extractor(rec.to(device)), dim=-1)[0])

        return feature_distance
    raise InvalidInputError(f"unknown quality metric {metric!r}; choose one of {', '.join(METRICS)}")


@dataclass(frozen=True)
class DecodeSettings:
    """Decoder settings that make a reconstruction reproducible (seeded initial noise)."""

    seed: int = 0
    steps: int = 20
    guidance_scale: float = 7.5
    apg: bool = True


def seeded_noise(model: FlexTok, seed: int) -> Tensor:
    """The decoder's initial noise ``[1, C, h, w]`` for ``seed``, drawn on the CPU so every device agrees."""
    return model.initial_noise(1, torch.Generator().manual_seed(seed))


@torch.no_grad()
def decode(model: FlexTok, tokens: Tensor, settings: DecodeSettings) -> Tensor:
    """Token ids ``LongTensor [k]`` -> image ``[1, 3, H, W]`` clamped to [-1, 1], deterministic given ``settings``."""
    images = model.detokenize(
        tokens.reshape(1, -1),
        steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        apg=settings.apg,
        noise=seeded_noise(model, settings.seed),
    )
    return images.clamp(-1, 1)


@dataclass
class AdaptiveResult:
    """Outcome of :func:`search_k`: the chosen ``k``, its ``score``, whether the target was ``met`` (False means
    even all N tokens missed it and k = N), and every ``scores[k]`` the search evaluated."""

    k: int
    score: float
    met: bool
    scores: dict[int, float] = field(default_factory=dict)


@torch.no_grad()
def search_k(
    model: FlexTok,
    image: Tensor,
    target: QualityTarget,
    scorer: Scorer | None = None,
    settings: DecodeSettings | None = None,
    tokens: Tensor | None = None,
) -> AdaptiveResult:
    """Smallest k in ``1..N`` whose reconstruction of ``image [3,H,W]`` (or ``[1,3,H,W]``, in [-1, 1]) meets
    ``target``, by binary search (assumes quality is monotone in k; see the module docstring).

    ``tokens`` (``LongTensor [N]``) skips tokenization when already known. Costs ``1 + ceil(log2(N))`` decodes.
    """
    settings = settings or DecodeSettings()
    scorer = scorer or build_scorer(target.metric, model.device)
    ref = image.reshape(1, *image.shape[-3:]).float()
    if tokens is None:
        tokens = model.tokenize(ref)[0]
    tokens = tokens.reshape(-1)

    def score(k: int) -> float:
        return scorer(ref, decode(model, tokens[:k], settings).cpu())

    return bisect_k(tokens.numel(), score, target)


def bisect_k(n: int, score: Callable[[int], float], target: QualityTarget) -> AdaptiveResult:
    """Binary search for the smallest ``k`` in ``1..n`` with ``target.is_met(score(k))``, assuming met-ness is
    monotone in k. Evaluates ``score(n)`` first and returns ``k=n, met=False`` if even that misses (NaN scores
    never meet a target). Each k is scored at most once; ``1 + ceil(log2(n))`` calls at most."""
    if n < 1:
        raise InvalidInputError(f"need at least one token to search over, got n={n}")
    scores: dict[int, float] = {}

    def met(k: int) -> bool:
        if k not in scores:
            scores[k] = float(score(k))
        return not math.isnan(scores[k]) and target.is_met(scores[k])

    if not met(n):
        return AdaptiveResult(n, scores[n], False, scores)
    lo, hi = 1, n  # invariant: hi meets the target; every visited k < lo missed it
    while lo < hi:
        mid = (lo + hi) // 2
        if met(mid):
            hi = mid
        else:
            lo = mid + 1
    return AdaptiveResult(hi, scores[hi], True, scores)


# ---------------------------------------------------------------------------- complexity measures
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
        " (approximately true for a trained model); see `flexitok.adaptive`.",
        "",
    ]
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.2f}"


def write_report(path: str | Path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode("utf-8"))
