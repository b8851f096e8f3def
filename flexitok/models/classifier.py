"""A small CNN image classifier, used to score class-conditional generations (e.g. Fashion-MNIST accuracy).

Works at any resolution (adaptive pooling) on ``[B, 3, H, W]`` images in [-1, 1]; trained in-repo with
:mod:`flexitok.train.classifier` and stored like every flexitok model (``save_pretrained`` / ``from_pretrained``). The
single-file layout of flexitok 0.1.0 (weights with the config in the safetensors metadata) still loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flexitok.errors import CheckpointError, InvalidInputError
from flexitok.utils.config_json import config_from_json
from flexitok.utils.persistence import ForeignFormat, PretrainedModel
from flexitok.utils.weights import read_safetensors_header

# The safetensors metadata tag of the single-file layout of flexitok 0.1.0.
LEGACY_FORMAT = "flexitok-classifier"


@dataclass
class ClassifierConfig:
    image_size: int = 32
    num_classes: int = 10
    width: int = 32
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.width % 8:
            raise InvalidInputError(f"width must be a multiple of 8 (GroupNorm with 8 groups), got {self.width}")
        if self.class_names is not None:
            self.class_names = tuple(self.class_names)
            if len(self.class_names) != self.num_classes:
                raise InvalidInputError(f"{len(self.class_names)} class names for num_classes={self.num_classes}")


class SmallCNN(PretrainedModel):
    """Three conv stages (width, 2*width, 4*width) with GroupNorm + SiLU, global pooling, linear head.

    images [B, 3, H, W] in [-1, 1] -> logits [B, num_classes].
    """

    model_type = "classifier"
    config_class = ClassifierConfig
    bundled_dir = "classifiers"

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        layers: list[nn.Module] = []
        c_in = 3
        for i, c_out in enumerate((w, 2 * w, 4 * w)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
            layers += [nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(4 * w, config.num_classes)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise InvalidInputError(f"classifier takes images [B, 3, H, W], got {tuple(images.shape)}")
        size = self.config.image_size
        x = images.float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return self.head(self.features(x).mean(dim=(2, 3)))

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """images [B, 3, H, W] -> predicted class ids LongTensor [B]."""
        dev = self.head.weight.device
        outs = [self(images[i : i + batch_size].to(dev)).argmax(-1).cpu() for i in range(0, len(images), batch_size)]
        return torch.cat(outs)

    @classmethod
    def estimate_state_size(cls, config: ClassifierConfig) -> int:
        w = config.width
        convs = 9 * (3 * w + w * w + w * 2 * w + 4 * w * w + 2 * w * 4 * w + 16 * w * w)
        return convs + 3 * 2 * 7 * w + (4 * w + 1) * config.num_classes


def _is_legacy_file(path: Path) -> bool:
    if not (path.is_file() and path.suffix == ".safetensors"):
        return False
    try:
        return read_safetensors_header(path).metadata.get("format") == LEGACY_FORMAT
    except CheckpointError:
        return False


def _load_legacy_file(path: Path) -> SmallCNN:
    """A classifier saved by flexitok 0.1.0: one safetensors file, the config JSON in its metadata."""
    meta = read_safetensors_header(path).metadata
    source = f"{path} (metadata 'config')"
    try:
        data = json.loads(meta.get("config", ""))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{source} is not valid JSON ({e})") from None
    config = config_from_json(ClassifierConfig, data, source)
    return SmallCNN.from_config_and_weights(config, path, source=str(path))


SmallCNN.register_format(ForeignFormat(name="flexitok-0.1-file", detect=_is_legacy_file, load=_load_legacy_file))


@torch.no_grad()
def accuracy(model: SmallCNN, images: Tensor, labels: Tensor) -> float:
    """Fraction of images [B, 3, H, W] whose predicted class equals labels [B]."""
    return float((model.predict(images) == labels.cpu()).float().mean())
