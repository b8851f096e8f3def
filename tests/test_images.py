"""Image IO: conversion to the model's input format, clear errors for bad files, atomic saving, grids."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexitok.errors import InvalidInputError
from flexitok.io.images import (
    is_image_file,
    load_image,
    load_images,
    make_grid,
    pil_to_tensor,
    save_grid,
    save_image,
    tensor_to_pil,
)


def _rand_rgb(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), mode="RGB")


def test_exact_size_rgb_roundtrip_is_lossless(tmp_path: Path) -> None:
    img = _rand_rgb(16, 24)
    img.save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png", (16, 24))
    assert loaded.note == ""
    assert loaded.tensor.shape == (3, 16, 24) and loaded.tensor.dtype == torch.float32
    assert loaded.tensor.min() >= -1 and loaded.tensor.max() <= 1
    expected = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(loaded.tensor, expected)
    save_image(loaded.tensor, tmp_path / "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), np.asarray(img))


def test_center_crop_keeps_the_middle(tmp_path: Path) -> None:
    arr = np.zeros((20, 60, 3), dtype=np.uint8)
    arr[:, :20, 0] = 255  # red | green | blue thirds
    arr[:, 20:40, 1] = 255
    arr[:, 40:, 2] = 255
    Image.fromarray(arr).save(tmp_path / "wide.png")
    loaded = load_image(tmp_path / "wide.png", (20, 20))
    assert "center-cropped 60x20 to 20x20" in loaded.note and "resized" not in loaded.note
    assert torch.equal(loaded.tensor[1], torch.ones(20, 20))
    assert torch.equal(loaded.tensor[0], -torch.ones(20, 20)) and torch.equal(loaded.tensor[2], -torch.ones(20, 20))


def test_tall_rgba_is_cropped_resized_and_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((80, 40, 4), dtype=np.uint8)  # fully transparent black
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "t.png")
    loaded = load_image(tmp_path / "t.png", (16, 16))
    assert (
        "RGBA" in loaded.note
        and "center-cropped 40x80 to 40x40" in loaded.note
        and "resized 40x40 to 16x16" in loaded.note
    )
    assert loaded.tensor.shape == (3, 16, 16)
    torch.testing.assert_close(loaded.tensor, torch.ones(3, 16, 16))  # transparent -> white


def test_upscale_and_non_square_target(tmp_path: Path) -> None:
    _rand_rgb(8, 8).save(tmp_path / "s.png")
    loaded = load_image(tmp_path / "s.png", (32, 16))
    assert loaded.tensor.shape == (3, 32, 16)
    assert "center-cropped 8x8 to 4x8" in loaded.note and "resized 4x8 to 16x32" in loaded.note


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "I;16"])
def test_other_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    base = _rand_rgb(12, 12)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
        assert img.mode == "I;16"
    else:
        img = base.convert(mode)
    path = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
    img.save(path)
    loaded = load_image(path, (12, 12))
    assert loaded.tensor.shape == (3, 12, 12)
    assert "to RGB" in loaded.note
    if mode in ("L", "1", "I;16"):  # gray: equal channels
        assert torch.equal(loaded.tensor[0], loaded.tensor[1]) and torch.equal(loaded.tensor[1], loaded.tensor[2])
    if mode == "I;16":  # 16-bit values are rescaled, not clipped to white
        gray = torch.from_numpy(np.asarray(base.convert("L")).astype(np.float32)) / 127.5 - 1
        torch.testing.assert_close(loaded.tensor[0], gray, atol=1 / 127.5, rtol=0)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = _rand_rgb(10, 20)  # 20 wide, 10 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 10 wide, 20 high
    img.save(tmp_path / "r.png", exif=exif)
    loaded = load_image(tmp_path / "r.png", (20, 10))
    assert "EXIF" in loaded.note and "crop" not in loaded.note and "resize" not in loaded.note
    expected = pil_to_tensor(img.transpose(Image.Transpose.ROTATE_270))
    torch.testing.assert_close(loaded.tensor, expected)


def test_load_from_bytes_and_batch(tmp_path: Path) -> None:
    buf = io.BytesIO()
    _rand_rgb(8, 8, seed=1).save(buf, format="PNG")
    from_bytes = load_image(buf.getvalue(), (8, 8))
    _rand_rgb(8, 8, seed=1).save(tmp_path / "1.png")
    _rand_rgb(16, 8, seed=2).save(tmp_path / "2.png")
    batch, notes = load_images([tmp_path / "1.png", tmp_path / "2.png"], (8, 8), progress=False)
    assert batch.shape == (2, 3, 8, 8)
    assert notes[0] == "" and "crop" in notes[1]
    torch.testing.assert_close(batch[0], from_bytes.tensor)
    with pytest.raises(InvalidInputError, match="no images"):
        load_images([], (8, 8))


def _truncated_png(tmp_path: Path) -> Path:
    buf = io.BytesIO()
    _rand_rgb(64, 64).save(buf, format="PNG")
    path = tmp_path / "truncated.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


@pytest.mark.parametrize("kind", ["garbage", "text", "truncated", "empty", "missing", "directory"])
def test_bad_files_raise_invalid_input_with_the_file_name(tmp_path: Path, kind: str) -> None:
    if kind == "garbage":
        path = tmp_path / "garbage.png"
        path.write_bytes(os.urandom(500))
    elif kind == "text":
        path = tmp_path / "notes.jpg"
        path.write_text("this is not an image\n")
    elif kind == "truncated":
        path = _truncated_png(tmp_path)
    elif kind == "empty":
        path = tmp_path / "empty.png"
        path.write_bytes(b"")
    elif kind == "missing":
        path = tmp_path / "missing.png"
    else:
        path = tmp_path / "folder.png"
        path.mkdir()
    with pytest.raises(InvalidInputError) as info:
        load_image(path, (8, 8))
    assert path.name in str(info.value)


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _rand_rgb(64, 64).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 2 x 1000 -> DecompressionBombError
    with pytest.raises(InvalidInputError, match="too large"):
        load_image(tmp_path / "big.png", (8, 8))


def test_save_image_clamps_validates_and_leaves_no_partial_files(tmp_path: Path) -> None:
    x = torch.linspace(-3, 3, 3 * 4 * 5).reshape(3, 4, 5)
    out = save_image(x, tmp_path / "sub" / "c.png")
    arr = np.asarray(Image.open(out))
    assert arr.min() == 0 and arr.max() == 255
    assert np.array_equal(arr, np.asarray(tensor_to_pil(x.clamp(-1, 1))))
    with pytest.raises(InvalidInputError, match="suffix"):
        save_image(x, tmp_path / "c.unknownext")
    with pytest.raises(InvalidInputError, match=r"\[3, H, W\]"):
        save_image(torch.zeros(1, 3, 4, 4), tmp_path / "d.png")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["c.png", "sub"]
    save_image(torch.zeros(3, 4, 5), tmp_path / "c.jpg")  # lossy formats work too
    assert Image.open(tmp_path / "c.jpg").size == (5, 4)


def test_make_grid_layout() -> None:
    imgs = torch.stack([torch.full((3, 4, 6), v) for v in (-1.0, 0.0, 0.5)])
    grid = make_grid(imgs, pad=1)
    assert grid.shape == (3, 1 + 4 + 1, 1 + 3 * (6 + 1))
    for j, v in enumerate((-1.0, 0.0, 0.5)):
        assert torch.equal(grid[:, 1:5, 1 + j * 7 : 7 + j * 7], torch.full((3, 4, 6), v))
    assert torch.equal(grid[:, 0, :], torch.ones(3, grid.shape[2]))  # white padding
    two_rows = make_grid(imgs, pad=1, nrow=2)
    assert two_rows.shape == (3, 1 + 2 * 5, 1 + 2 * 7)
    assert torch.equal(two_rows[:, 6:10, 8:14], torch.ones(3, 4, 6))  # missing cell is white
    nested = make_grid([[imgs[0], imgs[1]], imgs[2:]], pad=0)
    assert nested.shape == (3, 8, 12) and torch.equal(nested[:, 4:, :6], imgs[2])
    with pytest.raises(InvalidInputError, match="cells"):
        make_grid([[torch.zeros(3, 4, 4), torch.zeros(3, 5, 4)]])


def test_save_grid_draws_labels_above_columns(tmp_path: Path) -> None:
    rows = [[torch.zeros(3, 24, 24) for _ in range(3)] for _ in range(2)]
    plain = Image.open(save_grid(rows, tmp_path / "plain.png"))
    labeled = Image.open(save_grid(rows, tmp_path / "labeled.png", labels=["input", "k=1", "k=4"]))
    assert plain.size == (2 + 3 * 26, 2 + 2 * 26)
    assert labeled.width == plain.width and labeled.height > plain.height
    strip = np.asarray(labeled)[: labeled.height - plain.height]
    for j in range(3):  # dark text pixels above every column
        col = strip[:, 2 + j * 26 : 2 + j * 26 + 24]
        assert (col < 128).any()
    with pytest.raises(InvalidInputError, match="labels"):
        save_grid(rows, tmp_path / "bad.png", labels=["a", "b", "c", "d"])


def test_is_image_file() -> None:
    assert is_image_file("a/b.JPG") and is_image_file("x.webp")
    assert not is_image_file("tokens.json")


def test_palette_transparency_is_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("P", (6, 6), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.paste(1, (0, 0, 3, 6))  # left half red, right half palette index 0 (transparent)
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png", transparency=0)
    loaded = load_image(tmp_path / "p.png", (6, 6))
    assert "transparency composited on white" in loaded.note
    assert torch.equal(loaded.tensor[:, :, 3:], torch.ones(3, 6, 3))
    assert torch.equal(loaded.tensor[:, :, :3], torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 6, 3))
