"""Random crops of the colour photographs bundled with scikit-image (a tiny offline natural-image set)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from flexitok.data.base import DatasetError, ImageItem, index_generator
from flexitok.data.transforms import ImageTransform

# Colour photos shipped inside scikit-image (no download). The split is by source photo so test crops never
# come from a training picture.
SKIMAGE_TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "retina",
    "motorcycle",
)
SKIMAGE_TEST_PHOTOS: tuple[str, ...] = ("chelsea", "immunohistochemistry")

DEFAULT_NUM_ITEMS = {"train": 4096, "test": 256}
DEFAULT_CROP_SCALE = (0.05, 0.5)


def load_skimage_photo(name: str) -> Image.Image:
    """One bundled photo as an RGB PIL image (grayscale/alpha inputs are converted)."""
    try:
        import skimage.data as skdata
    except ImportError as e:
        raise DatasetError("the 'skimage' dataset needs scikit-image: pip install scikit-image") from e
    if name == "motorcycle":
        arr = skdata.stereo_motorcycle()[0]  # left view; the right view would leak the same scene
    else:
        loader = getattr(skdata, name, None)
        if loader is None:
            raise DatasetError(f"scikit-image has no bundled photo named {name!r}")
        arr = loader()
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]))


class SkimagePhotos(Dataset):
    """Map-style dataset of random crops: item ``i`` crops photo ``i % n_photos``.

    Items: ``{"image": [3, S, S] in [-1, 1], "label": photo index within the split}``. The crop scale range
    comes from the transform (default ``(0.05, 0.5)`` of the photo area). Training crops use the global RNG;
    test crops are fixed per index.
    """

    def __init__(
        self,
        split: str = "train",
        transform: ImageTransform | None = None,
        num_items: int | None = None,
        seed: int = 0,
    ) -> None:
        if split not in DEFAULT_NUM_ITEMS:
            raise DatasetError(f"unknown skimage split {split!r}; expected 'train' or 'test'")
        self.split = split
        self.photo_names = SKIMAGE_TRAIN_PHOTOS if split == "train" else SKIMAGE_TEST_PHOTOS
        self.photos = [load_skimage_photo(name) for name in self.photo_names]
        self.num_items = num_items if num_items is not None else DEFAULT_NUM_ITEMS[split]
        if self.num_items < 1:
            raise DatasetError(f"skimage dataset needs at least one item, got {self.num_items}")
        if transform is None:
            transform = ImageTransform(size=32, random_resized_crop=DEFAULT_CROP_SCALE)
        elif transform.random_resized_crop is None:
            # A whole-photo centre crop would give the same image for every index; crops are the point here.
            transform = dataclasses.replace(transform, random_resized_crop=DEFAULT_CROP_SCALE)
        self.transform = transform
        self.seed = seed
        self.classes = self.photo_names
        self.class_names: list[str] = list(self.photo_names)

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> ImageItem:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = index % len(self)
        label = index % len(self.photos)
        generator = index_generator(self.seed, index) if self.split == "test" else None
        image: torch.Tensor = self.transform(self.photos[label], generator)
        return {"image": image, "label": label}
