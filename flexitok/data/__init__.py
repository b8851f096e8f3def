"""Datasets for flexitok: Fashion-MNIST, image folders, webdataset shards, scikit-image photos, caches.

``build_dataset(DataConfig(...))`` returns a dataset whose items are
``{"image": FloatTensor [3, S, S] in [-1, 1], "label": int (-1 when unknown)}`` (Fashion-MNIST adds
``"caption"``, webdataset ``"skipped"``). All datasets are map-style except the webdataset reader (an
``IterableDataset``). Image datasets expose ``class_names`` (label i is ``class_names[i]``).
:func:`eval_source` says where a run evaluates: a held-out split, or a fixed held-out set of samples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from flexitok.data.base import DatasetError, ImageItem, index_generator
from flexitok.data.fashion_mnist import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, FashionMNIST
from flexitok.data.folder import IMAGE_EXTENSIONS, ImageFolder, list_images
from flexitok.data.latents import LatentCacheDataset, write_latent_cache
from flexitok.data.skimage_photos import SkimagePhotos
from flexitok.data.splits import EVAL_SPLITS, available_splits, check_split_name, root_class_names, split_dir
from flexitok.data.tokens import TokenShardDataset, write_token_shards
from flexitok.data.transforms import ImageTransform
from flexitok.data.webdataset import WebDatasetShards, write_folder_shards, write_webdataset_shards
from flexitok.utils.limits import MAX_IMAGE_SIDE

DataKind = Literal["fashion_mnist", "folder", "webdataset", "skimage"]
DATA_KINDS: tuple[str, ...] = ("fashion_mnist", "folder", "webdataset", "skimage")


@dataclass
class DataConfig:
    """What to load and how to turn it into ``[3, image_size, image_size]`` tensors.

    ``path``: Fashion-MNIST folder (default /usr/share/datasets/fashion-mnist), image folder root, or
    webdataset shards (folder, glob, or comma list). ``split``: any split the source has. For folders and shard
    folders, ``path/<split>`` when ``path`` has split folders (``train``, ``val``, ``test``, ...; see
    :mod:`flexitok.data.splits`); a root without split folders is split ``train`` only; a split that does not
    exist is a :class:`DatasetError` naming those that do. Fashion-MNIST and skimage have ``train`` and ``test``.
    ``random_resized_crop`` is a scale range (e.g. ``(0.8, 1.0)``); ``None`` resizes the shorter side and
    centre-crops. ``channel_shuffle`` is the probability of a random RGB permutation (colour augmentation).
    ``limit`` keeps the first N items (per reader for webdataset).
    ``holdout``: N samples of the split are held out, a fixed choice (a seeded random subset of the indices for
    map-style datasets; for shards the first samples of the last shard, then of the one before it): the dataset
    yields the rest, or only them with ``holdout_only`` (see :func:`eval_source`).
    webdataset only (train split): ``shuffle_buffer`` samples per reader in the shuffle buffer (0: off);
    ``resampled`` draws shards with replacement instead of one pass per epoch, an epoch then being
    ``epoch_size`` samples per rank (default: the shard index's total / world size). ``max_skip_ratio``: a
    reader that skips more than this fraction of its samples (undecodable, bad labels) stops with an error.
    ``captions`` (webdataset): items carry ``"caption"`` from each sample's ``.txt`` (or ``.json`` caption)
    member, as img2dataset writes them (Fashion-MNIST items always carry one).
    """

    kind: DataKind
    path: str | None = None
    split: str = "train"
    image_size: int = 32
    random_resized_crop: tuple[float, float] | None = None
    hflip: bool = False
    channel_shuffle: float = 0.0
    limit: int | None = None
    shuffle_buffer: int = 1000
    resampled: bool = False
    epoch_size: int | None = None
    holdout: int = 0
    holdout_only: bool = False
    max_skip_ratio: float = 0.01
    captions: bool = False

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise DatasetError(f"unknown dataset kind {self.kind!r}; choose one of {', '.join(DATA_KINDS)}")
        if isinstance(self.path, Path):
            self.path = str(self.path)
        if self.path is not None and (not isinstance(self.path, str) or not self.path):
            raise DatasetError(f"data.path must be a non-empty string, got {self.path!r}")
        check_split_name(self.split)
        self.image_size = _int_field("image_size", self.image_size, 1, MAX_IMAGE_SIDE)
        if self.random_resized_crop is not None:
            try:
                lo, hi = (float(v) for v in self.random_resized_crop)
            except (TypeError, ValueError) as e:
                raise DatasetError(f"random_resized_crop must be two numbers, got {self.random_resized_crop!r}") from e
            if not 0 < lo <= hi <= 1:  # also refuses NaN
                raise DatasetError(f"random_resized_crop must be a scale range 0 < lo <= hi <= 1, got {(lo, hi)}")
            self.random_resized_crop = (lo, hi)
        self.hflip = _bool_field("hflip", self.hflip)
        self.channel_shuffle = _fraction_field("channel_shuffle", self.channel_shuffle)
        if self.limit is not None:
            self.limit = _int_field("limit", self.limit, 1)
        self.shuffle_buffer = _int_field("shuffle_buffer", self.shuffle_buffer, 0)
        self.resampled = _bool_field("resampled", self.resampled)
        if self.epoch_size is not None:
            self.epoch_size = _int_field("epoch_size", self.epoch_size, 1)
        self.holdout = _int_field("holdout", self.holdout, 0)
        self.holdout_only = _bool_field("holdout_only", self.holdout_only)
        if self.holdout_only and self.holdout == 0:
            raise DatasetError("data.holdout_only needs data.holdout > 0 (the number of held-out samples)")
        self.max_skip_ratio = _fraction_field("max_skip_ratio", self.max_skip_ratio)
        self.captions = _bool_field("captions", self.captions)
        if self.captions and self.kind not in ("webdataset", "fashion_mnist"):
            raise DatasetError(f"data.captions needs webdataset shards with captions, not {self.kind!r}")

    def transform(self) -> ImageTransform:
        return ImageTransform(
            size=self.image_size,
            random_resized_crop=self.random_resized_crop,
            hflip=self.hflip,
            channel_shuffle=self.channel_shuffle,
        )


_MAX_INT = 2**62  # far beyond any real size; keeps values inside torch's int64


def _int_field(name: str, value: object, lo: int, hi: int = _MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatasetError(f"data.{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise DatasetError(
            f"data.{name} must be an integer in [{lo}, {hi if hi != _MAX_INT else '2**62'}], got {value}"
        )
    return value


def _bool_field(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise DatasetError(f"data.{name} must be true or false, got {value!r}")
    return value


def _fraction_field(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:  # NaN fails too
        raise DatasetError(f"data.{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class HeldOut(Dataset):
    """A map-style dataset without (or with only) its held-out items: a fixed, seeded choice of ``n`` indices.

    The choice depends only on (len(dataset), n) (the first ``n`` of a permutation with a constant seed), so a
    training set and its evaluation set built from the same config agree. ``limit`` then keeps the first items.
    """

    SEED = 20_251_207

    def __init__(self, dataset: Dataset, n: int, only: bool, limit: int | None = None) -> None:
        size = len(dataset)  # type: ignore[arg-type]
        if not only and n >= size:
            raise DatasetError(f"cannot hold out {n} of {size} samples and still train on the rest")
        perm = torch.randperm(size, generator=torch.Generator().manual_seed(self.SEED)).tolist()
        indices = sorted(perm[:n]) if only else sorted(perm[n:])
        self.indices: list[int] = indices[:limit] if limit is not None else indices
        self.dataset = dataset
        self.class_names: list[str] = list(getattr(dataset, "class_names", []))

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.class_names)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> ImageItem:
        n = len(self.indices)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        item: ImageItem = self.dataset[self.indices[index]]
        return item


def build_dataset(cfg: DataConfig) -> Dataset:
    """Build the dataset described by ``cfg`` (see :class:`DataConfig`)."""
    transform = cfg.transform()
    # Map-style datasets hold out from the whole split, then apply the limit: the held-out choice must not depend
    # on the limit, so a training config and its evaluation config agree.
    limit = None if cfg.holdout else cfg.limit
    evaluation = cfg.split != "train" or cfg.holdout_only  # fixed crops / no shuffling
    dataset: Dataset
    if cfg.kind == "fashion_mnist":
        dataset = FashionMNIST(cfg.path, split=cfg.split, transform=transform, limit=limit)
        dataset.split = "test" if evaluation else cfg.split  # per-index augmentation when evaluating
    elif cfg.kind == "folder":
        root = split_dir(cfg.path, cfg.split, cfg.kind)
        names = root_class_names(cfg.path, IMAGE_EXTENSIONS) if cfg.path is not None else None
        dataset = ImageFolder(root, transform=transform, limit=limit, deterministic=evaluation, class_names=names)
    elif cfg.kind == "webdataset":
        if cfg.path is None:
            raise DatasetError("dataset kind 'webdataset' needs DataConfig.path")
        # A folder is resolved to its split folder; explicit shard files (a path, glob or comma list) are read as
        # given, the split then only choosing training or evaluation reading (no shuffling for non-train splits).
        shards: str | Path = split_dir(cfg.path, cfg.split, cfg.kind) if Path(cfg.path).is_dir() else cfg.path
        return WebDatasetShards(
            shards,
            transform=transform,
            shuffle_shards=not evaluation,
            limit=cfg.limit,
            shuffle_buffer=0 if evaluation else cfg.shuffle_buffer,
            resampled=cfg.resampled and not evaluation,
            epoch_size=cfg.epoch_size,
            holdout=cfg.holdout,
            holdout_only=cfg.holdout_only,
            max_skip_ratio=cfg.max_skip_ratio,
            captions=cfg.captions,
        )
    else:
        dataset = SkimagePhotos(split=cfg.split, transform=transform, num_items=limit)
        dataset.split = "test" if evaluation else cfg.split
    if cfg.holdout:
        return HeldOut(dataset, cfg.holdout, only=cfg.holdout_only, limit=cfg.limit)
    return dataset


def source_splits(cfg: DataConfig) -> list[str]:
    """The splits ``cfg``'s source has (``train`` and ``test`` for Fashion-MNIST and skimage)."""
    if cfg.kind in ("fashion_mnist", "skimage"):
        return ["train", "test"]
    if cfg.path is None:
        raise DatasetError(f"dataset kind {cfg.kind!r} needs DataConfig.path")
    if not Path(cfg.path).is_dir():
        return [cfg.split]  # explicit shard files: the split they were given as
    return available_splits(Path(cfg.path))


def eval_source(cfg: DataConfig, n: int) -> tuple[DataConfig, DataConfig, str]:
    """Where a run that trains on ``cfg`` evaluates: ``(train_cfg, eval_cfg, description)``.

    * The sibling held-out split when the source has one (``val``, then ``validation``/``valid``, then ``test``;
      never ``cfg.split`` itself): ``eval_cfg`` reads a fixed, seeded choice of ``n`` of its samples (all of
      them when it has fewer; shards: the first ``n`` of its last shards), without augmentation; ``train_cfg``
      is ``cfg``.
    * Else ``n`` samples of ``cfg``'s own split are held out (:attr:`DataConfig.holdout`): ``train_cfg`` never
      reads them and ``eval_cfg`` reads only them. Map-style datasets: a seeded random choice of indices;
      webdataset shards: the first ``n`` samples of the last shard (then of the one before it, ...).

    Raises :class:`DatasetError` when neither is possible (the split has no more than ``n`` samples).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DatasetError(f"the number of evaluation samples must be a positive integer, got {n!r}")
    plain = {
        "random_resized_crop": None,
        "hflip": False,
        "channel_shuffle": 0.0,
        "resampled": False,
        "limit": None,
        "epoch_size": None,
        "holdout": n,
        "holdout_only": True,
    }
    where = cfg.path if cfg.path is not None else cfg.kind
    splits = source_splits(cfg)
    for split in EVAL_SPLITS:
        if split != cfg.split and split in splits:
            eval_cfg = dataclasses.replace(cfg, split=split, **plain)  # type: ignore[arg-type]
            return cfg, eval_cfg, f"split {split!r} of {where} ({n} fixed samples, never trained on)"
    if cfg.holdout:
        raise DatasetError(f"data.holdout is already set ({cfg.holdout}); give the evaluation data explicitly")
    train_cfg = dataclasses.replace(cfg, holdout=n, holdout_only=False)
    eval_cfg = dataclasses.replace(cfg, **plain)  # type: ignore[arg-type]
    # Refuse now (not at the first evaluation) when the split is too small; a folder is counted without
    # verifying every image (the run's own build does that once).
    if cfg.kind == "folder":
        found = len(list_images(split_dir(cfg.path, cfg.split, cfg.kind)))
        if found <= n:
            raise DatasetError(f"cannot hold out {n} of {found} samples and still train on the rest")
    else:
        build_dataset(train_cfg)
    how = "the first samples of the last shard(s)" if cfg.kind == "webdataset" else "a seeded random choice"
    return (
        train_cfg,
        eval_cfg,
        f"{n} samples held out of split {cfg.split!r} of {where} ({how}; it has no held-out split: "
        f"{', '.join(splits)}), never trained on",
    )


__all__ = [
    "DATA_KINDS",
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "DataConfig",
    "DatasetError",
    "FashionMNIST",
    "HeldOut",
    "ImageFolder",
    "ImageItem",
    "ImageTransform",
    "LatentCacheDataset",
    "SkimagePhotos",
    "TokenShardDataset",
    "WebDatasetShards",
    "build_dataset",
    "eval_source",
    "index_generator",
    "source_splits",
    "write_latent_cache",
    "write_folder_shards",
    "write_token_shards",
    "write_webdataset_shards",
]
