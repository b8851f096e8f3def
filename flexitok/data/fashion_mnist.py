"""Fashion-MNIST from the gzipped IDX files of the Debian ``dataset-fashion-mnist`` package."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from flexitok.data.base import DatasetError, ImageItem, index_generator
from flexitok.data.transforms import ImageTransform

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Natural-language names used in captions (same order as FASHION_MNIST_CLASSES).
_CAPTION_NAMES: tuple[str, ...] = (
    "t-shirt",
    "pair of trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of {}",
    "a picture of {}",
    "a grayscale photo of {}",
    "a product photo of {}",
    "an image of {}",
)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def fashion_mnist_caption(label: int, index: int) -> str:
    """Caption for an item, e.g. ``"a photo of a sneaker"``; the template is chosen by ``index`` (deterministic)."""
    name = _CAPTION_NAMES[label]
    article = "an" if name[0] in "aeiou" else "a"
    return CAPTION_TEMPLATES[index % len(CAPTION_TEMPLATES)].format(f"{article} {name}")


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"Fashion-MNIST file {stem}.gz not found in {root}; install it with `apt-get install dataset-fashion-mnist` "
        "or point DataConfig.path at a folder holding the IDX files"
    )


def read_idx(path: Path) -> np.ndarray:
    """Read a (optionally gzipped) IDX file of unsigned bytes -> uint8 array of the stored shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read IDX file {path}: {e}") from e
    if len(data) < 4:
        raise DatasetError(f"IDX file {path} is truncated")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file (magic {data[:4].hex()})")
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DatasetError(f"IDX file {path} holds {len(data) - header} bytes of data, expected {expected} for {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


class FashionMNIST(Dataset):
    """Map-style Fashion-MNIST: items ``{"image": [3, S, S] in [-1, 1], "label": int, "caption": str}``.

    The whole split is held in memory as uint8 (47 MB for train); items are converted on access. Random
    augmentations use the global RNG for ``split="train"`` and a per-index generator for ``"test"``.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        transform: ImageTransform | None = None,
        limit: int | None = None,
        seed: int = 0,
    ) -> None:
        if split not in _FILES:
            raise DatasetError(f"unknown Fashion-MNIST split {split!r}; expected 'train' or 'test'")
        self.root = Path(root if root is not None else DEFAULT_FASHION_MNIST_DIR)
        if not self.root.is_dir():
            raise DatasetError(
                f"Fashion-MNIST folder {self.root} does not exist; install it with "
                "`apt-get install dataset-fashion-mnist`"
            )
        images_stem, labels_stem = _FILES[split]
        images = read_idx(_find(self.root, images_stem))
        labels = read_idx(_find(self.root, labels_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(f"Fashion-MNIST {split} files disagree: images {images.shape}, labels {labels.shape}")
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.images = images
        self.labels = labels
        self.split = split
        self.transform = transform if transform is not None else ImageTransform(size=32)
        self.seed = seed
        self.classes = FASHION_MNIST_CLASSES
        self.class_names: list[str] = list(FASHION_MNIST_CLASSES)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> ImageItem:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = index % len(self)
        generator = index_generator(self.seed, index) if self.split == "test" else None
        img = Image.fromarray(self.images[index])
        label = int(self.labels[index])
        image: torch.Tensor = self.transform(img, generator)
        return {"image": image, "label": label, "caption": fashion_mnist_caption(label, index)}
