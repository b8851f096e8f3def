"""One image preprocessing path: a file gives the same pixels at training (datasets) and at inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexitok.data.folder import ImageFolder
from flexitok.data.transforms import ImageTransform
from flexitok.io.images import load_image


def _rgb(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def _write_files(root: Path) -> list[Path]:
    files = []

    def add(name: str, save) -> None:
        path = root / name
        save(path)
        files.append(path)

    gray16 = (np.linspace(0, 65535, 40 * 24).reshape(24, 40)).astype(np.uint16)
    add("gray16.png", lambda p: Image.fromarray(gray16).save(p))  # mode I;16, non-square
    add("palette.png", lambda p: Image.fromarray(_rgb(30, 30, 1)).quantize(16).save(p))
    add("palette_alpha.png", lambda p: Image.fromarray(_rgb(20, 30, 2)).quantize(8).save(p, transparency=0))
    add("cmyk.jpg", lambda p: Image.fromarray(_rgb(36, 20, 3)).convert("CMYK").save(p, quality=90))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    add("rotated.jpg", lambda p: Image.fromarray(_rgb(48, 20, 4)).save(p, exif=exif, quality=90))
    add("rotated.png", lambda p: Image.fromarray(_rgb(20, 44, 5)).save(p, exif=exif))
    add("wide.png", lambda p: Image.fromarray(_rgb(70, 25, 6)).save(p))
    add("rgba.webp", lambda p: Image.fromarray(np.dstack([_rgb(24, 24, 7), _rgb(24, 24, 8)[..., 0]])).save(p))
    return files


@pytest.mark.parametrize("size", [16, 64])  # shrinking (LANCZOS) and enlarging (BICUBIC)
def test_training_and_inference_give_the_same_pixels(tmp_path: Path, size: int) -> None:
    files = _write_files(tmp_path)
    dataset = ImageFolder(tmp_path, transform=ImageTransform(size=size), with_labels=False)
    assert [Path(p).name for p in dataset.paths] == sorted(f.name for f in files)
    notes = set()
    for i, path in enumerate(dataset.paths):
        inference = load_image(path, (size, size))
        notes.add(inference.note)
        training = dataset[i]["image"]
        assert torch.equal(training, inference.tensor), path
        with Image.open(path) as img:
            assert torch.equal(ImageTransform(size=size)(img), inference.tensor), path
    joined = " ".join(notes)
    for step in ("converted I;16", "converted P", "converted CMYK", "applied EXIF orientation", "center-cropped"):
        assert step in joined, f"the files exercise {step!r}"


def test_exif_rotation_is_applied_in_training(tmp_path: Path) -> None:
    # A 48x20 landscape photo tagged "rotate 90": both paths see a portrait image.
    arr = np.zeros((20, 48, 3), np.uint8)
    arr[:, :24] = 255  # left half white -> after rotating clockwise, the top half is white
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "r.png", exif=exif)
    x = ImageFolder(tmp_path, transform=ImageTransform(size=8), with_labels=False)[0]["image"]
    assert float(x[:, :4].mean()) > 0.9 and float(x[:, 4:].mean()) < -0.9
