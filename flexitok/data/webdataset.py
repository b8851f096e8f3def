"""webdataset-style tar shards of ``<key>.jpg|png`` + ``<key>.cls`` pairs, read and written with ``tarfile``.

No dependency on the ``webdataset`` package: members are grouped by key (the file name up to its first dot)
in archive order, as webdataset does. Shards are split across distributed ranks and DataLoader workers.
"""

from __future__ import annotations

import glob
import io
import os
import tarfile
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from flexitok.data.base import DatasetError, ImageItem
from flexitok.data.folder import _LOAD_ERRORS
from flexitok.data.transforms import ImageTransform

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def resolve_shards(spec: str | Path | list[str]) -> list[Path]:
    """Shard list from a directory (all ``*.tar`` inside), a glob pattern, a comma list, or a list of paths."""
    if isinstance(spec, list):
        paths = [Path(p) for p in spec]
    else:
        text = str(spec)
        if Path(text).is_dir():
            paths = sorted(Path(text).glob("*.tar"))
        elif "," in text:
            paths = [Path(p.strip()) for p in text.split(",") if p.strip()]
        elif any(ch in text for ch in "*?["):
            paths = [Path(p) for p in sorted(glob.glob(text))]
        else:
            paths = [Path(text)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"webdataset shard(s) not found: {', '.join(missing[:5])}")
    if not paths:
        raise DatasetError(f"no .tar shards found for {spec}")
    return paths


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def iter_tar_samples(path: Path) -> Iterator[dict[str, Any]]:
    """Yield ``{"__key__": key, ext: bytes, ...}`` per sample, grouping consecutive members by key."""
    current: dict[str, bytes] = {}
    current_key: str | None = None
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name
            base = os.path.basename(name)
            if "." not in base or base.startswith("."):
                continue
            dirname = os.path.dirname(name)
            stem, ext = base.split(".", 1)
            key = f"{dirname}/{stem}" if dirname else stem
            if key != current_key and current:
                yield {"__key__": current_key or "", **current}
                current = {}
            current_key = key
            f = tar.extractfile(member)
            if f is not None:
                current[ext.lower()] = f.read()
    if current:
        yield {"__key__": current_key or "", **current}


class WebDatasetShards(IterableDataset):
    """Iterable over tar shards; items ``{"image": [3, S, S] in [-1, 1], "label": int (-1 without .cls)}``.

    Shards are assigned round-robin to ``rank * num_workers + worker`` after an optional per-epoch shuffle
    of the shard order (``set_epoch``). Samples without an image or whose image fails to decode are skipped
    and counted in ``num_skipped`` (per worker process). ``limit`` caps the items each consumer yields.
    """

    def __init__(
        self,
        shards: str | Path | list[str],
        transform: ImageTransform | None = None,
        shuffle_shards: bool = False,
        seed: int = 0,
        limit: int | None = None,
    ) -> None:
        self.shards = resolve_shards(shards)
        self.transform = transform if transform is not None else ImageTransform(size=256)
        self.shuffle_shards = shuffle_shards
        self.seed = seed
        self.limit = limit
        self.epoch = 0
        self.num_skipped = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_shards(self) -> list[Path]:
        shards = list(self.shards)
        if self.shuffle_shards:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            shards = [shards[i] for i in torch.randperm(len(shards), generator=g).tolist()]
        rank, world = _rank_world()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        consumer, consumers = rank * num_workers + worker, world * num_workers
        if consumers > len(shards) and consumer == 0:
            warnings.warn(
                f"{len(shards)} shard(s) for {consumers} readers: some readers get no data; write more shards",
                stacklevel=2,
            )
        return shards[consumer::consumers]

    def _decode(self, sample: dict[str, bytes]) -> ImageItem | None:
        data = next((sample[ext] for ext in _IMAGE_EXTS if ext in sample), None)
        if data is None:
            return None
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                pil = img.copy()
        except _LOAD_ERRORS:
            return None
        label = int(sample["cls"].decode().strip()) if "cls" in sample else -1
        return {"image": self.transform(pil), "label": label}

    def __iter__(self) -> Iterator[ImageItem]:
        produced = 0
        for shard in self._my_shards():
            for sample in iter_tar_samples(shard):
                item = self._decode(sample)
                if item is None:
                    self.num_skipped += 1
                    continue
                yield item
                produced += 1
                if self.limit is not None and produced >= self.limit:
                    return


def _encode_image(image: Image.Image | np.ndarray | torch.Tensor, fmt: str) -> bytes:
    if isinstance(image, torch.Tensor):  # [3, H, W] in [-1, 1]
        arr = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        image = Image.fromarray(arr)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG" if fmt == "jpg" else "PNG", quality=95)
    return buf.getvalue()


def write_webdataset_shards(
    samples: Iterable[tuple[Image.Image | np.ndarray | torch.Tensor, int]],
    out_dir: str | Path,
    shard_size: int = 1000,
    prefix: str = "shard",
    fmt: str = "png",
) -> list[Path]:
    """Write ``(image, label)`` pairs as ``<prefix>-000000.tar`` shards of ``<key>.<fmt>`` + ``<key>.cls``.

    Each shard is written to a temporary file and renamed into place, so a crash leaves no half shard.
    Returns the shard paths.
    """
    if fmt not in ("png", "jpg"):
        raise DatasetError(f"unsupported image format {fmt!r}; use 'png' or 'jpg'")
    if shard_size < 1:
        raise DatasetError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    tar: tarfile.TarFile | None = None
    tmp_path = ""
    index = 0

    def close_current() -> None:
        nonlocal tar
        if tar is not None:
            tar.close()
            final = out / f"{prefix}-{len(written):06d}.tar"
            os.replace(tmp_path, final)
            written.append(final)
            tar = None

    def add(name: str, payload: bytes) -> None:
        assert tar is not None
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(payload))

    try:
        for image, label in samples:
            if tar is None:
                fd, tmp_path = tempfile.mkstemp(dir=out, prefix=f".{prefix}-", suffix=".tar.tmp")
                os.close(fd)
                tar = tarfile.open(tmp_path, "w")
            key = f"{index:09d}"
            add(f"{key}.{fmt}", _encode_image(image, fmt))
            add(f"{key}.cls", str(int(label)).encode())
            index += 1
            if index % shard_size == 0:
                close_current()
        close_current()
    except BaseException:
        if tar is not None:
            tar.close()
            Path(tmp_path).unlink(missing_ok=True)
        raise
    return written
