"""Datasets for flexitok: Fashion-MNIST, image folders, webdataset shards, scikit-image photos, caches.

``build_dataset(DataConfig(...))`` returns a dataset whose items are
``{"image": FloatTensor [3, S, S] in [-1, 1], "label": int (-1 when unknown)}`` (Fashion-MNIST adds
``"caption"``). All datasets are map-style except the webdataset reader (an ``IterableDataset``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from flexitok.data.base import DatasetError, ImageItem, index_generator
from flexitok.data.fashion_mnist import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, FashionMNIST
from flexitok.data.folder import ImageFolder
from flexitok.data.latents import LatentCacheDataset, write_latent_cache
from flexitok.data.skimage_photos import SkimagePhotos
from flexitok.data.tokens import TokenShardDataset, write_token_shards
from flexitok.data.transforms import ImageTransform
from flexitok.data.webdataset import WebDatasetShards, write_folder_shards, write_webdataset_shards

DataKind = Literal["fashion_mnist", "folder", "webdataset", "skimage"]
DATA_KINDS: tuple[str, ...] = ("fashion_mnist", "folder", "webdataset", "skimage")


@dataclass
class DataConfig:
    """What to load and how to turn it into ``[3, image_size, image_size]`` tensors.

    ``path``: Fashion-MNIST folder (default /usr/share/datasets/fashion-mnist), image folder root, or
    webdataset shards (folder, glob, or comma list); for folders and shard folders ``path/<split>`` is used
    when it exists. ``random_resized_crop`` is a scale range (e.g. ``(0.8, 1.0)``); ``None`` resizes the
    shorter side and centre-crops. ``channel_shuffle`` is the probability of a random RGB permutation (colour
    augmentation). ``limit`` keeps the first N items (per reader for webdataset).
    webdataset only (train split): ``shuffle_buffer`` samples per reader in the shuffle buffer (0: off);
    ``resampled`` draws shards with replacement instead of one pass per epoch, an epoch then being
    ``epoch_size`` samples per rank (default: the shard index's total / world size).
    """

    kind: DataKind
    path: str | None = None
    split: Literal["train", "test"] = "train"
    image_size: int = 32
    random_resized_crop: tuple[float, float] | None = None
    hflip: bool = False
    channel_shuffle: float = 0.0
    limit: int | None = None
    shuffle_buffer: int = 1000
    resampled: bool = False
    epoch_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise DatasetError(f"unknown dataset kind {self.kind!r}; choose one of {', '.join(DATA_KINDS)}")
        if self.split not in ("train", "test"):
            raise DatasetError(f"unknown split {self.split!r}; expected 'train' or 'test'")
        if self.image_size < 1:
            raise DatasetError(f"image_size must be positive, got {self.image_size}")
        if self.random_resized_crop is not None:
            lo, hi = self.random_resized_crop
            if not 0 < lo <= hi <= 1:
                raise DatasetError(f"random_resized_crop must be a scale range 0 < lo <= hi <= 1, got {(lo, hi)}")
            self.random_resized_crop = (float(lo), float(hi))
        if not 0.0 <= self.channel_shuffle <= 1.0:
            raise DatasetError(f"channel_shuffle must be a probability in [0, 1], got {self.channel_shuffle}")
        if self.limit is not None and self.limit < 1:
            raise DatasetError(f"limit must be >= 1, got {self.limit}")
        if self.shuffle_buffer < 0 or (self.epoch_size is not None and self.epoch_size < 1):
            raise DatasetError(
                f"need shuffle_buffer >= 0 and epoch_size >= 1, got {self.shuffle_buffer}, {self.epoch_size}"
            )

    def transform(self) -> ImageTransform:
        return ImageTransform(
            size=self.image_size,
            random_resized_crop=self.random_resized_crop,
            hflip=self.hflip,
            channel_shuffle=self.channel_shuffle,
        )


def _split_dir(path: str | None, split: str, kind: str) -> Path:
    if path is None:
        raise DatasetError(f"dataset kind {kind!r} needs DataConfig.path")
    root = Path(path)
    return root / split if (root / split).is_dir() else root


def build_dataset(cfg: DataConfig) -> Dataset:
    """Build the dataset described by ``cfg`` (see :class:`DataConfig`)."""
    transform = cfg.transform()
    if cfg.kind == "fashion_mnist":
        return FashionMNIST(cfg.path, split=cfg.split, transform=transform, limit=cfg.limit)
    if cfg.kind == "folder":
        root = _split_dir(cfg.path, cfg.split, cfg.kind)
        return ImageFolder(root, transform=transform, limit=cfg.limit, deterministic=cfg.split == "test")
    if cfg.kind == "webdataset":
        if cfg.path is None:
            raise DatasetError("dataset kind 'webdataset' needs DataConfig.path")
        shards: str | Path = _split_dir(cfg.path, cfg.split, cfg.kind) if Path(cfg.path).is_dir() else cfg.path
        train = cfg.split == "train"
        return WebDatasetShards(
            shards,
            transform=transform,
            shuffle_shards=train,
            limit=cfg.limit,
            shuffle_buffer=cfg.shuffle_buffer if train else 0,
            resampled=cfg.resampled and train,
            epoch_size=cfg.epoch_size,
        )
    return SkimagePhotos(split=cfg.split, transform=transform, num_items=cfg.limit)


__all__ = [
    "DATA_KINDS",
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "DataConfig",
    "DatasetError",
    "FashionMNIST",
    "ImageFolder",
    "ImageItem",
    "ImageTransform",
    "LatentCacheDataset",
    "SkimagePhotos",
    "TokenShardDataset",
    "WebDatasetShards",
    "build_dataset",
    "index_generator",
    "write_latent_cache",
    "write_folder_shards",
    "write_token_shards",
    "write_webdataset_shards",
]
