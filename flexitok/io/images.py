"""Image files <-> tensors: loading with conversion to the model's input format, atomic saving, grids.

Conventions: an image tensor is float ``[3, H, W]`` (a batch ``[B, 3, H, W]``) with values in ``[-1, 1]``;
``size`` arguments are ``(H, W)``. Loading converts any mode (grayscale, palette, RGBA, 16-bit, CMYK) to RGB,
applies the EXIF orientation, center-crops to the target aspect ratio (a square for square models) and resizes
to ``size``; every step that changed the image is described in :attr:`LoadedImage.note` so the CLI can tell the
user in one line. Unreadable files raise :class:`flexitok.errors.InvalidInputError` naming the file.

Public helpers (stable; the CLI, the demo and the evaluation code import them): :func:`load_image`,
:func:`load_images`, :func:`fit_within`, :func:`pil_to_tensor`, :func:`tensor_to_pil`, :func:`save_image`, :func:`make_grid`,
:func:`save_grid`, :func:`is_image_file`, :data:`IMAGE_EXTENSIONS`. The steps of :func:`load_pil` --
:func:`exif_transpose`, :func:`to_rgb`, :func:`center_crop_resize` (and :func:`resize_box`, its scaling) -- are
public too: the training transforms (:mod:`flexitok.data.transforms`) are built from them, so a file gives the
same pixels at training and at inference.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError
from torch import Tensor
from tqdm.auto import tqdm

from flexitok.errors import InvalidInputError
from flexitok.utils.files import atomic_write

ImageSource = str | os.PathLike | bytes | BinaryIO

# File name suffixes treated as images when a folder is given (lower case, with the dot).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".tga"}
)

_EXIF_ORIENTATION = 0x0112

# Pad value of grids: 1.0 is white in [-1, 1] space.
_GRID_PAD_VALUE = 1.0


class ImageTooLargeError(InvalidInputError):
    """An image whose header declares more pixels than the caller allows (refused before decoding)."""


class LoadedImage(NamedTuple):
    """A loaded image: ``tensor`` [3, H, W] in [-1, 1] and ``note``, a short description of the conversion
    applied (empty when the file already was an RGB image of the requested size)."""

    tensor: Tensor
    note: str


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has an image suffix (see :data:`IMAGE_EXTENSIONS`); the content is not checked."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _source_name(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, bytes):
        return "<bytes>"
    return str(getattr(source, "name", "<stream>"))


def _open(source: ImageSource, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image, turning every PIL failure into :class:`InvalidInputError`.

    ``max_pixels``: refuse (:class:`ImageTooLargeError`) an image whose header declares more pixels, before its
    pixel data is decoded (a small compressed file can declare a huge image)."""
    name = _source_name(source)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise InvalidInputError(f"{name}: no such file")
        if os.path.isdir(source):
            raise InvalidInputError(f"{name}: is a directory, not an image file")
        if not os.path.isfile(source):
            # A FIFO, socket or device would block or never end: only regular files are read.
            raise InvalidInputError(f"{name}: not a regular file (a pipe, socket or device), not an image file")
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            # Over MAX_IMAGE_PIXELS PIL only warns; over twice that it raises DecompressionBombError (handled below).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLargeError(
                    f"{name}: the image is {w}x{h} = {w * h / 1e6:.1f} megapixels; at most {max_pixels / 1e6:.1f} "
                    "megapixels are decoded here"
                )
            img.load()  # Image.open is lazy: truncated or corrupt pixel data only fails here
    except InvalidInputError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{name}: image is too large to load safely ({e})") from None
    except UnidentifiedImageError:
        raise InvalidInputError(f"{name}: not an image file or an unsupported image format") from None
    except (OSError, SyntaxError, ValueError) as e:
        # PIL reports truncated/corrupt data as OSError (and a few decoders as SyntaxError/ValueError).
        raise InvalidInputError(f"{name}: cannot read image ({e})") from None
    return img


def exif_transpose(img: Image.Image, notes: list[str] | None = None) -> Image.Image:
    """Apply the EXIF orientation tag (rotate / mirror the pixels upright); images without one are unchanged."""
    if img.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1):  # 0 is invalid but seen in the wild: ignore it
        img = ImageOps.exif_transpose(img)
        if notes is not None:
            notes.append("applied EXIF orientation")
    return img


def to_rgb(img: Image.Image, notes: list[str] | None = None) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparent pixels are composited on white.

    16-bit and 32-bit grayscale is scaled by its bit depth (65535 = white), not by the image's own range.
    """
    notes = notes if notes is not None else []
    n_frames = int(getattr(img, "n_frames", 1))
    if n_frames > 1:
        notes.append(f"used the first of {n_frames} frames")
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Wide grayscale: rescale by the value range PIL's own convert("L") would clip.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        notes.append(f"converted {mode} to RGB")
        return Image.fromarray(arr, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append(f"converted {mode} to RGB (transparency composited on white)")
        return Image.alpha_composite(background, rgba).convert("RGB")
    notes.append(f"converted {mode} to RGB")
    return img.convert("RGB")


def resize_box(img: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """Resize ``img`` (or its ``box`` = (left, top, right, bottom)) to ``size`` = (H, W).

    LANCZOS when shrinking (the best downsampling filter), BICUBIC when enlarging (no LANCZOS ringing).
    """
    th, tw = size
    src_w = img.size[0] if box is None else box[2] - box[0]
    resample = Image.Resampling.LANCZOS if src_w > tw else Image.Resampling.BICUBIC
    return img.resize((tw, th), resample=resample, box=box)


def center_crop_resize(img: Image.Image, size: tuple[int, int], notes: list[str] | None = None) -> Image.Image:
    """Center-crop to the aspect ratio of ``size`` = (H, W), then resize to exactly ``size``."""
    notes = notes if notes is not None else []
    th, tw = size
    w, h = img.size
    # Largest centered box with the target aspect ratio (integer arithmetic avoids off-by-one drift).
    if w * th > h * tw:
        cw, ch = (h * tw) // th, h
    else:
        cw, ch = w, (w * th) // tw
    cw, ch = max(cw, 1), max(ch, 1)
    if (cw, ch) != (w, h):
        left, top = (w - cw) // 2, (h - ch) // 2
        img = img.crop((left, top, left + cw, top + ch))
        notes.append(f"center-cropped {w}x{h} to {cw}x{ch}")
    if (cw, ch) != (tw, th):
        img = resize_box(img, (th, tw))
        notes.append(f"resized {cw}x{ch} to {tw}x{th}")
    return img


def pil_to_tensor(img: Image.Image) -> Tensor:
    """An RGB PIL image -> FloatTensor [3, H, W] in [-1, 1]."""
    if img.mode != "RGB":
        raise InvalidInputError(f"expected an RGB image, got mode {img.mode!r}")
    arr = np.asarray(img, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def tensor_to_pil(image: Tensor) -> Image.Image:
    """FloatTensor [3, H, W] in [-1, 1] (values outside are clamped) -> RGB PIL image."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise InvalidInputError(f"expected an image tensor of shape [3, H, W], got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise InvalidInputError(f"expected a floating-point image tensor, got {image.dtype}")
    x = image.detach().float().cpu().nan_to_num(0.0).clamp(-1.0, 1.0)
    arr = ((x + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(arr, mode="RGB")


SizeRule = tuple[int, int] | Callable[[tuple[int, int]], tuple[int, int]]


def fit_within(size: tuple[int, int], box: tuple[int, int], multiple: tuple[int, int]) -> tuple[int, int]:
    """The largest ``(H, W)`` inside ``box`` with the aspect ratio of ``size`` (as closely as sides that are
    multiples of ``multiple`` allow): for keeping an image's aspect ratio instead of cropping it to a square."""
    h, w = size
    scale = min(box[0] / h, box[1] / w)
    out = [max(m, int(s * scale) // m * m) for s, m in zip((h, w), multiple, strict=True)]
    return out[0], out[1]


def load_pil(img: Image.Image, size: SizeRule) -> LoadedImage:
    """Convert an already opened PIL image like :func:`load_image` does (for in-memory images, e.g. uploads)."""
    notes: list[str] = []
    img = exif_transpose(img, notes)
    img = to_rgb(img, notes)
    if callable(size):  # a rule of the (oriented) source size, e.g. keep its aspect ratio
        size = size((img.height, img.width))
    img = center_crop_resize(img, (int(size[0]), int(size[1])), notes)
    return LoadedImage(pil_to_tensor(img), "; ".join(notes))


def load_image(source: ImageSource, size: SizeRule, max_pixels: int | None = None) -> LoadedImage:
    """Load an image file (path, bytes or binary stream) as the model's input.

    Returns ``LoadedImage(tensor [3, H, W] in [-1, 1], note)`` with ``(H, W) = size``; ``note`` describes the
    conversion (mode, crop, resize), empty if none was needed. ``size`` may also be a function of the source's
    ``(H, W)`` (e.g. ``lambda hw: fit_within(hw, (256, 256), (16, 16))``). Raises :class:`InvalidInputError`
    (naming the file) for missing, corrupt, truncated, non-image or dangerously large files; with
    ``max_pixels``, :class:`ImageTooLargeError` for an image declaring more pixels (checked before decoding).
    """
    if not callable(size) and (len(size) != 2 or min(size) < 1):
        raise InvalidInputError(f"size must be (H, W) with positive entries, got {size}")
    img = _open(source, max_pixels)
    try:
        return load_pil(img, size)
    except (OSError, ValueError) as e:
        if isinstance(e, InvalidInputError):
            raise
        raise InvalidInputError(f"{_source_name(source)}: cannot convert image ({e})") from None


def load_images(
    paths: Sequence[ImageSource], size: tuple[int, int], progress: bool | None = None
) -> tuple[Tensor, list[str]]:
    """Load several images: returns ``(images [B, 3, H, W] in [-1, 1], notes)`` with one note per image.

    ``progress``: show a progress bar (default: when there are more than 8 images).
    """
    if len(paths) == 0:
        raise InvalidInputError("no images given")
    show = len(paths) > 8 if progress is None else progress
    tensors: list[Tensor] = []
    notes: list[str] = []
    for p in tqdm(paths, desc="loading images", unit="img", disable=not show):
        loaded = load_image(p, size)
        tensors.append(loaded.tensor)
        notes.append(loaded.note)
    return torch.stack(tensors), notes


def _format_for(path: Path) -> str:
    ext = path.suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise InvalidInputError(f"{path}: cannot save images with suffix {ext!r}; use .png, .jpg or .webp")
    return fmt


def _atomic_save(img: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PIL image via a temporary file in the target folder + ``os.replace`` (no partial files)."""
    path = Path(path)
    fmt = _format_for(path)
    kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt, **kwargs))
    return path


def save_image(image: Tensor, path: str | os.PathLike) -> Path:
    """Save FloatTensor [3, H, W] in [-1, 1] (clamped) atomically; the format follows the suffix."""
    return _atomic_save(tensor_to_pil(image), path)


def _as_rows(images: Tensor | Sequence[Tensor | Sequence[Tensor]], nrow: int | None) -> list[list[Tensor]]:
    if isinstance(images, Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1] != 3:
            raise InvalidInputError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        flat = list(images.unbind(0))
        per_row = nrow or len(flat)
        return [flat[i : i + per_row] for i in range(0, len(flat), per_row)]
    rows: list[list[Tensor]] = []
    for row in images:
        if isinstance(row, Tensor):
            row_list = list(row.unbind(0)) if row.ndim == 4 else [row]
        else:
            row_list = list(row)
        rows.append(row_list)
    return rows


def make_grid(images: Tensor | Sequence[Tensor | Sequence[Tensor]], pad: int = 2, nrow: int | None = None) -> Tensor:
    """Tile images into one image tensor [3, H', W'] with ``pad`` pixels of white between and around cells.

    ``images`` is either a batch [B, 3, H, W] (laid out ``nrow`` per row; one row when ``nrow`` is None) or rows:
    a sequence whose items are [k, 3, H, W] tensors or sequences of [3, H, W] tensors. Every cell must have the
    same size; shorter rows are padded with white.
    """
    rows = _as_rows(images, nrow)
    if not rows or not any(rows):
        raise InvalidInputError("make_grid needs at least one image")
    cells = [c for row in rows for c in row]
    h, w = cells[0].shape[-2:]
    for c in cells:
        if c.ndim != 3 or c.shape[0] != 3 or tuple(c.shape[-2:]) != (h, w):
            raise InvalidInputError(f"all grid cells must be [3, {h}, {w}], got {tuple(c.shape)}")
    ncols = max(len(r) for r in rows)
    grid = torch.full((3, pad + len(rows) * (h + pad), pad + ncols * (w + pad)), _GRID_PAD_VALUE, dtype=torch.float32)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y : y + h, x : x + w] = cell.detach().float().cpu()
    return grid


def letterbox(image: Tensor, size: tuple[int, int]) -> Tensor:
    """``image [3, h, w]`` centred on a white ``[3, H, W]`` canvas (``H >= h``, ``W >= w``): grid cells of one size."""
    h, w = image.shape[-2:]
    if h > size[0] or w > size[1]:
        raise InvalidInputError(f"cannot letterbox a {h}x{w} image into {size[0]}x{size[1]}")
    out = torch.full((image.shape[0], *size), _GRID_PAD_VALUE, dtype=image.dtype)
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    out[:, top : top + h, left : left + w] = image
    return out


def save_grid(
    rows: Tensor | Sequence[Tensor | Sequence[Tensor]],
    path: str | os.PathLike,
    labels: Sequence[str] | None = None,
    pad: int = 2,
) -> Path:
    """Save a grid of images (see :func:`make_grid`) atomically, with optional column ``labels`` (e.g. "k=1")
    drawn in PIL's default font in a white strip above the columns."""
    grid = tensor_to_pil(make_grid(rows, pad=pad))
    if labels:
        cell_rows = _as_rows(rows, None)
        ncols = max(len(r) for r in cell_rows)
        if len(labels) > ncols:
            raise InvalidInputError(f"{len(labels)} labels for a grid of {ncols} columns")
        w = cell_rows[0][0].shape[-1]
        font = ImageFont.load_default()
        heights = [font.getbbox(str(t))[3] for t in labels]
        strip = int(max(heights)) + 2 * pad + 2
        canvas = Image.new("RGB", (grid.width, grid.height + strip), (255, 255, 255))
        canvas.paste(grid, (0, strip))
        draw = ImageDraw.Draw(canvas)
        for j, text in enumerate(labels):
            left, _, right, _ = font.getbbox(str(text))
            cx = pad + j * (w + pad) + w // 2
            draw.text((cx - (right - left) // 2, pad), str(text), fill=(0, 0, 0), font=font)
        grid = canvas
    return _atomic_save(grid, path)
