"""Adaptive token budgets: the smallest number of tokens k that reconstructs an image to a quality target.

FlexTok tokens are ordered coarse to fine, so reconstruction quality grows with k. The search assumes it grows
*monotonically* and binary-searches k in ``1..N`` with the decoder, decoding every candidate from the same seeded
noise (so the search is deterministic and the chosen k reproduces exactly when decoded with the same seed and
settings). Quality is only approximately monotone in k (the flow decoder is stochastic and a random model is
not monotone at all), so the k found is the smallest k the bisection *visited* that meets the target: an even
smaller k may exist, and every k above the returned one is not guaranteed to meet it. When even all N tokens miss
the target, the result is N with ``met=False``. :mod:`flexitok.codec.report` relates the k found to image
complexity.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from flexitok.errors import InvalidInputError
from flexitok.sampling.decode import DecodeConfig

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


@torch.no_grad()
def decode_tokens(model: FlexTok, tokens: Tensor, config: DecodeConfig) -> Tensor:
    """Token ids ``LongTensor [k]`` -> image ``[1, 3, H, W]`` clamped to [-1, 1], deterministic given ``config``
    (the noise comes from ``config.seed``, drawn on the CPU so every device agrees)."""
    return model.detokenize(tokens.reshape(1, -1), config).clamp(-1, 1)


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
    decode: DecodeConfig | None = None,
    tokens: Tensor | None = None,
) -> AdaptiveResult:
    """Smallest k in ``1..N`` whose reconstruction of ``image [3,H,W]`` (or ``[1,3,H,W]``, in [-1, 1]) meets
    ``target``, by binary search (assumes quality is monotone in k; see the module docstring).

    ``tokens`` (``LongTensor [N]``) skips tokenization when already known. Costs ``1 + ceil(log2(N))`` decodes.
    """
    decode = decode or DecodeConfig()
    scorer = scorer or build_scorer(target.metric, model.device)
    ref = image.reshape(1, *image.shape[-3:]).float()
    if tokens is None:
        tokens = model.tokenize(ref)[0]
    tokens = tokens.reshape(-1)

    def score(k: int) -> float:
        return scorer(ref, decode_tokens(model, tokens[:k], decode).cpu())

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
