"""The classifier target: the small CNN that scores class-conditional generations, trained by the common trainer.

``flexitok train classifier`` builds a :class:`ClassifierTrainConfig` from its flags (it has no YAML file);
:data:`TARGET` trains it with cross-entropy through :func:`flexitok.train.trainer.train` and exports the model
folder (``config.json`` + ``model.safetensors``) to ``export_to``. Items without a label (``label < 0``) are
left out of the loss.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from flexitok.data import DataConfig, DatasetError, build_dataset
from flexitok.errors import ConfigError
from flexitok.models.classifier import ClassifierConfig, SmallCNN, accuracy
from flexitok.train.config import RunConfig
from flexitok.train.run import TrainTarget
from flexitok.train.task import TrainTask
from flexitok.train.trainer_config import TrainerConfig
from flexitok.utils.config_json import Bound


@dataclass
class ClassifierTaskConfig:
    """``export_to``: the model folder written at the end (``None``: ``<train.out_dir>/classifier``);
    ``test_limit``: test-split images of the accuracy reported at each evaluation and at the end."""

    FIELD_BOUNDS: ClassVar[dict[str, Bound]] = {"test_limit": Bound(1, 2**24)}

    export_to: str | None = None
    test_limit: int = 2000

    def __post_init__(self) -> None:
        if self.test_limit < 1:
            raise ConfigError(f"task.test_limit must be >= 1, got {self.test_limit}")


@dataclass
class ClassifierTrainConfig(RunConfig):
    """``flexitok train classifier``: model + labelled data + optimisation + export."""

    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(kind="fashion_mnist"))
    train: TrainerConfig = field(default_factory=TrainerConfig)
    task: ClassifierTaskConfig = field(default_factory=ClassifierTaskConfig)


class ClassifierTask(TrainTask):
    """Cross-entropy on ``{"image": [B,3,H,W], "label": LongTensor [B]}``; accuracy on ``test_images``."""

    model: SmallCNN

    def __init__(self, model: SmallCNN, cfg: ClassifierTaskConfig, test: tuple[Tensor, Tensor] | None = None):
        super().__init__(model)
        self.cfg = cfg
        self.test = test  # (images [T,3,H,W], labels [T])

    def loss(self, batch: dict[str, Any], step: int) -> tuple[Tensor, dict[str, Any]]:
        labels = torch.as_tensor(batch["label"]).to(batch["image"].device)
        keep = labels >= 0
        loss = F.cross_entropy(self.model(batch["image"][keep]), labels[keep])
        return loss, {}

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        if self.test is None:
            return {}
        assert isinstance(model, SmallCNN)
        return {"accuracy": accuracy(model, *self.test)}

    def export(self, model: nn.Module, out_dir: Path) -> None:
        assert isinstance(model, SmallCNN)
        dest = Path(self.cfg.export_to) if self.cfg.export_to else Path(out_dir) / "classifier"
        model.eval().save_pretrained(dest)


def test_images(cfg: ClassifierTrainConfig) -> tuple[Tensor, Tensor]:
    """The first ``task.test_limit`` items of the data's test split: (images ``[T,3,H,W]``, labels ``[T]``)."""
    test_ds = build_dataset(replace(cfg.data, split="test", limit=cfg.task.test_limit))
    if not isinstance(test_ds, Sized):
        raise DatasetError(f"train classifier needs a dataset with a length; data.kind {cfg.data.kind} streams")
    items = [test_ds[i] for i in range(len(test_ds))]
    return torch.stack([it["image"] for it in items]), torch.tensor([int(it["label"]) for it in items])


def build(cfg: ClassifierTrainConfig) -> tuple[TrainTask, Dataset]:
    dataset = build_dataset(cfg.data)
    if not isinstance(dataset, Sized):
        raise DatasetError(f"train classifier needs a dataset with a length; data.kind {cfg.data.kind} streams")
    torch.manual_seed(cfg.train.seed)
    return ClassifierTask(SmallCNN(cfg.model), cfg.task, test_images(cfg)), dataset


TARGET = TrainTarget(
    name="classifier",
    help="train the small CNN classifier used by `eval generator`",
    config_class=ClassifierTrainConfig,
    build=build,
    exported=lambda cfg: Path(cfg.task.export_to or Path(cfg.train.out_dir) / "classifier"),
    export_label="classifier",
)
