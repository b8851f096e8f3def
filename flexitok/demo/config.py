"""What the demo serves and its server-side limits: :class:`DemoConfig`, :class:`DemoModel` and the
:class:`GeneratorBackend` the optional generation panel needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from flexitok.errors import InvalidInputError
from flexitok.sampling.decode import DecodeConfig

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Decoded-pixel floor: a 4096 x 4096 photo (48 MiB as RGB) is accepted whatever the model's size.
MIN_DEFAULT_MAX_PIXELS = 4096 * 4096
# skimage.data colour photos bundled with scikit-image (no download needed).
SKIMAGE_SAMPLES: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


class GeneratorBackend(Protocol):
    """What the optional generation panel needs. ``condition`` is ``"class"``, ``"text"`` or ``"none"``."""

    condition: str
    class_names: list[str]
    max_tokens: int

    def check_request(self, k: int, class_index: int | None, prompt: str | None) -> None:
        """Raise :class:`~flexitok.errors.FlexiTokError` for a request this backend would refuse (before any work)."""
        ...

    def generate(self, k: int, seed: int, class_index: int | None, prompt: str | None) -> Tensor:
        """-> one image ``[3, H, W]`` in [-1, 1] decoded from ``k`` generated tokens."""
        ...


def default_max_pixels(image_size: tuple[int, int]) -> int:
    """The decoded-pixel limit for uploads to a model of ``image_size``: 256 times its pixels, at least 4096^2."""
    return max(MIN_DEFAULT_MAX_PIXELS, 256 * int(image_size[0]) * int(image_size[1]))


@dataclass
class DemoConfig:
    """Server-side limits and decoder settings (a request's seed replaces ``decode.seed``).

    ``max_pixels``: uploads declaring more pixels are refused before decoding (None: :func:`default_max_pixels`
    of the model). ``workers``: requests doing heavy work at once; ``max_queue``: requests allowed to wait for a
    worker; ``queue_timeout_s``: the longest wait. Beyond these, 503. ``upload_timeout_s``: the longest a request
    body may take to arrive (408 after); ``max_uploads``: bodies read at once (503 beyond). Bodies are read before
    a request takes a worker or a queue place.
    """

    model_name: str = "model"
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_cached_images: int = 64
    max_cached_reconstructions: int = 512
    decode: DecodeConfig = DecodeConfig()
    samples_dir: Path | None = None  # extra sample images (e.g. the model's own); shown before the skimage photos
    skimage_samples: tuple[str, ...] = SKIMAGE_SAMPLES
    max_pixels: int | None = None
    workers: int = 2
    max_queue: int = 16
    queue_timeout_s: float = 60.0
    upload_timeout_s: float = 30.0
    max_uploads: int = 32

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1:
            raise InvalidInputError(f"max_upload_bytes must be positive, got {self.max_upload_bytes}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise InvalidInputError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.workers < 1 or self.max_queue < 0:
            raise InvalidInputError(f"need workers >= 1 and max_queue >= 0, got {self.workers} and {self.max_queue}")
        if self.max_uploads < 1:
            raise InvalidInputError(f"max_uploads must be positive, got {self.max_uploads}")
        for name in ("queue_timeout_s", "upload_timeout_s"):
            value = getattr(self, name)
            if not 0 < value < float("inf"):
                raise InvalidInputError(f"{name} must be positive and finite, got {value}")


@dataclass
class DemoModel:
    """One tokenizer the page can switch to: a loaded :class:`flexitok.FlexTok` (eval mode) under ``name``, its
    sample images (``samples_dir``, listed before ``skimage_samples``; ``None``: the :class:`DemoConfig`'s), its
    decoder settings (``None``: the config's) and an optional generator for the generation panel."""

    name: str
    model: Any
    samples_dir: Path | None = None
    skimage_samples: tuple[str, ...] | None = None
    decode: DecodeConfig | None = None
    generator: GeneratorBackend | None = None
