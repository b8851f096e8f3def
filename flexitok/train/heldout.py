"""The fixed held-out images a training run evaluates on (``train.eval_every > 0``).

:func:`held_out_data` decides, at start, what the run trains on and what it evaluates on:

- ``eval_data`` given: the first ``n`` items of it;
- else the held-out split of the same source when one exists (``OUT/val`` next to ``OUT/train``), or a fixed
  set of ``n`` samples that the training data then excludes (:func:`flexitok.data.eval_source`);
- neither possible: :class:`~flexitok.errors.ConfigError` before any model is built (not at the first
  evaluation, hours into a run).

The evaluation items are read once into memory (:class:`FixedEvalSet`), so a streaming (webdataset) source
works like a folder: every evaluation sees the same ``n`` images, and ``len()`` is defined.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from torch.utils.data import Dataset, IterableDataset

from flexitok.data import DataConfig, DatasetError, build_dataset, eval_source
from flexitok.errors import ConfigError, FeatureExtractorError
from flexitok.eval.features import FeatureExtractor, build_extractor
from flexitok.train.checkpointing.state import preserve_rng


class FixedEvalSet(Dataset):
    """A map-style dataset over a fixed in-memory list of items (``{"image": [3,H,W], ...}``)."""

    def __init__(self, items: list[dict[str, Any]], description: str = "") -> None:
        self.items = items
        self.description = description

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def first_items(dataset: Dataset, n: int) -> list[dict[str, Any]]:
    """The first ``n`` items of a map-style or iterable dataset (fewer when it holds fewer)."""
    if isinstance(dataset, IterableDataset):
        return list(itertools.islice(iter(dataset), n))
    return [dataset[i] for i in range(min(n, len(dataset)))]  # type: ignore[arg-type]


def plain_images(cfg: DataConfig) -> DataConfig:
    """Evaluation images without augmentation (the same images at every evaluation)."""
    return dataclasses.replace(cfg, random_resized_crop=None, hflip=False, channel_shuffle=0.0)


def held_out_data(
    data: DataConfig, eval_data: DataConfig | None, n: int, enabled: bool
) -> tuple[DataConfig, FixedEvalSet | None]:
    """(the training data config, the fixed evaluation set or None when evaluation is off).

    ``enabled``: ``train.eval_every > 0``; ``n``: the task's ``eval_images`` (0 turns evaluation off).
    Raises :class:`ConfigError` when evaluation is on but there is nothing to hold out.
    """
    if not enabled or n <= 0:
        return data, None
    if eval_data is not None:
        train_cfg, eval_cfg, what = data, eval_data, f"eval_data ({eval_data.path or eval_data.kind})"
    else:
        try:
            train_cfg, eval_cfg, what = eval_source(data, n)
        except DatasetError as e:
            raise ConfigError(
                f"train.eval_every > 0 needs images to evaluate on and none can be held out: {e}. Set eval_data, "
                "add a val/ split beside train/, or set train.eval_every=0"
            ) from None
    with preserve_rng():  # reading the evaluation images must not shift the training run's random stream
        items = first_items(build_dataset(plain_images(eval_cfg)), n)
    if not items:
        raise ConfigError(f"train.eval_every > 0 but {what} holds no images")
    return train_cfg, FixedEvalSet(items, f"{len(items)} images: {what}")


def eval_extractor(name: str | None, eval_dataset: Dataset | None, n: int) -> FeatureExtractor | None:
    """The feature network of the training-time Frechet distance, built at start (a missing ``eval`` extra is
    reported then, not at the first evaluation): None when evaluation or the FD is off, or with < 2 images."""
    if name is None or eval_dataset is None or n < 2:
        return None
    with preserve_rng():  # building a network must not shift the training run's random stream
        try:
            return build_extractor(name)
        except FeatureExtractorError as e:
            print(f"training-time evaluation: PSNR only, no Frechet distance ({e})", flush=True)
            return None
