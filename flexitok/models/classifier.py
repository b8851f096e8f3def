"""A small CNN image classifier, used to score class-conditional generations (e.g. Fashion-MNIST accuracy).

Works at any resolution (adaptive pooling) on ``[B, 3, H, W]`` images in [-1, 1]; trained in-repo with
:func:`train_classifier` and stored as one safetensors file with its config in the header metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from flexitok.errors import CheckpointError, InvalidInputError
from flexitok.io.checkpoint import load_state_dict_strict, read_safetensors, save_safetensors

CLASSIFIER_FORMAT = "flexitok-classifier"


@dataclass
class ClassifierConfig:
    image_size: int = 32
    num_classes: int = 10
    width: int = 32
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.class_names is not None:
            self.class_names = tuple(self.class_names)


class SmallCNN(nn.Module):
    """Three conv stages (width, 2*width, 4*width) with GroupNorm + SiLU, global pooling, linear head.

    images [B, 3, H, W] in [-1, 1] -> logits [B, num_classes].
    """

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

    def save(self, path: str | os.PathLike[str]) -> Path:
        """One safetensors file; the config lives in its metadata."""
        meta = {"format": CLASSIFIER_FORMAT, "config": json.dumps(dataclasses.asdict(self.config))}
        save_safetensors(self.state_dict(), path, metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> SmallCNN:
        state, meta = read_safetensors(path)
        if meta.get("format") != CLASSIFIER_FORMAT:
            raise CheckpointError(f"{path} is not a flexitok classifier (train one with `flexitok train-classifier`)")
        model = cls(ClassifierConfig(**json.loads(meta["config"])))
        load_state_dict_strict(model, state, str(path))
        return model.to(device).eval()


def train_classifier(
    dataset: Dataset,
    config: ClassifierConfig,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 2e-3,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> SmallCNN:
    """Train on items ``{"image": [3, S, S] in [-1, 1], "label": int}`` with AdamW + cosine decay. -> model (eval)."""
    if steps < 1:
        raise InvalidInputError(f"steps must be >= 1, got {steps}")
    torch.manual_seed(seed)
    model = SmallCNN(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) > batch_size)  # type: ignore[arg-type]
    step = 0
    bar = tqdm(total=steps, desc="classifier", disable=not progress)
    model.train()
    while step < steps:
        for batch in loader:
            labels = torch.as_tensor(batch["label"]).to(device)
            keep = labels >= 0
            loss = F.cross_entropy(model(batch["image"].to(device)[keep]), labels[keep])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if step >= steps:
                break
    bar.close()
    return model.eval()


@torch.no_grad()
def accuracy(model: SmallCNN, images: Tensor, labels: Tensor) -> float:
    """Fraction of images [B, 3, H, W] whose predicted class equals labels [B]."""
    return float((model.predict(images) == labels.cpu()).float().mean())
