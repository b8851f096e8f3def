"""Recursive image-folder dataset that skips unreadable files instead of crashing."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from flexitok.data.base import DatasetError, ImageItem, index_generator
from flexitok.data.transforms import ImageTransform

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# Errors PIL raises for truncated or corrupt files (DecompressionBombError is a subclass of Exception too).
_LOAD_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def list_images(root: Path) -> list[Path]:
    """All image files under ``root`` (recursive, case-insensitive extension match), sorted for determinism.
    Hidden files and folders (``.ipynb_checkpoints/``, ``._x.jpg``) are not images of the dataset."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )


def is_readable_image(path: Path) -> bool:
    """Cheap integrity check: PIL parses the header and ``verify()`` walks the data without decoding pixels."""
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except _LOAD_ERRORS:
        return False


class ImageFolder(Dataset):
    """Map-style dataset over every image below ``root``.

    Items: ``{"image": [3, S, S] in [-1, 1], "label": int}``. Labels come from the first-level sub-folder
    name when every image sits in such a folder (``root/<class>/.../img.png``) and ``with_labels`` is not
    False; otherwise they are -1. ``class_names`` lists the class names (label i is ``class_names[i]``): the
    given ``class_names`` (the mapping shared by every split of a dataset; a class folder missing from it is
    an error), else the sorted class folders of ``root``.

    Unreadable files are dropped at index time (counted in ``num_skipped``, one warning). A file that still
    fails to decode in ``__getitem__`` is replaced by the next readable index (deterministic) and counted
    in ``num_load_failures`` (per process).
    """

    def __init__(
        self,
        root: str | Path,
        transform: ImageTransform | None = None,
        with_labels: bool | None = None,
        limit: int | None = None,
        verify: bool = True,
        deterministic: bool = False,
        seed: int = 0,
        class_names: list[str] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"image folder {self.root} does not exist or is not a directory")
        candidates = list_images(self.root)
        if verify:
            paths = [p for p in candidates if is_readable_image(p)]
        else:
            paths = candidates
        self.num_skipped = len(candidates) - len(paths)
        if self.num_skipped:
            msg = f"skipped {self.num_skipped} unreadable image file(s) of {len(candidates)} under {self.root}"
            warnings.warn(msg, stacklevel=2)
            logger.warning(msg)
        if limit is not None:
            paths = paths[:limit]
        if not paths:
            raise DatasetError(
                f"no readable images under {self.root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        self.paths = paths

        rel_parts = [p.relative_to(self.root).parts for p in paths]
        in_class_dirs = all(len(parts) >= 2 for parts in rel_parts)
        if with_labels and not in_class_dirs:
            raise DatasetError(f"with_labels=True needs every image under {self.root} inside a class sub-folder")
        use_labels = in_class_dirs if with_labels is None else with_labels
        found = sorted({parts[0] for parts in rel_parts}) if use_labels else []
        if use_labels and class_names is not None:
            unknown = [c for c in found if c not in set(class_names)]
            if unknown:
                raise DatasetError(
                    f"class folder(s) {', '.join(unknown[:5])} under {self.root} are not in the class list"
                )
            found = list(class_names)
        self.class_names: list[str] = found
        class_to_idx = {c: i for i, c in enumerate(self.class_names)}
        self.labels = [class_to_idx[parts[0]] if use_labels else -1 for parts in rel_parts]

        self.transform = transform if transform is not None else ImageTransform(size=256)
        self.deterministic = deterministic
        self.seed = seed
        self.num_load_failures = 0
        self._warned_load_failure = False

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as img:
            img.load()  # decode now, inside the try of the caller, so corrupt data is caught here
            return img.copy()

    def __getitem__(self, index: int) -> ImageItem:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index = index % n
        for offset in range(n):
            candidate = (index + offset) % n
            try:
                img = self._load(candidate)
            except _LOAD_ERRORS as e:
                self.num_load_failures += 1
                if not self._warned_load_failure:
                    self._warned_load_failure = True
                    warnings.warn(
                        f"failed to decode {self.paths[candidate]} ({e}); using the next image instead "
                        "(further failures are counted in num_load_failures)",
                        stacklevel=2,
                    )
                continue
            generator = index_generator(self.seed, index) if self.deterministic else None
            image: torch.Tensor = self.transform(img, generator)
            return {"image": image, "label": self.labels[candidate]}
        raise DatasetError(f"none of the {n} images under {self.root} could be decoded")
