"""Data-loader throughput on webdataset shards: decoded + augmented images/s, total and per worker.

    python benchmarks/data_loader.py                              # synthetic ImageNet-like JPEG shards
    python benchmarks/data_loader.py --shards /data/imagenet-shards/train --workers 0 4 8 --images 4000

Runs the real training input path (:class:`flexitok.data.WebDatasetShards`: tar reading, shuffle buffer, JPEG
decode, random-resized crop to ``--size`` with the paper's scale range, horizontal flip, batching) and prints
images/s for each ``--workers`` setting. Size ``num_workers`` for a GPU by dividing its training images/s
(``flexitok train tokenizer --dry-run`` or benchmarks/gpu_check.py) by the per-worker figure.
Synthetic shards hold ``--synthetic`` random-texture JPEGs of 500x375 (about the ImageNet mean size).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from flexitok.data.transforms import ImageTransform
from flexitok.data.webdataset import WebDatasetShards, write_webdataset_shards


def synthetic_shards(out: Path, n: int, seed: int = 0) -> Path:
    """Random smooth-texture RGB JPEGs of 500x375 (photo-like entropy: upsampled noise plus grain)."""
    rng = np.random.default_rng(seed)

    def images():
        for i in range(n):
            coarse = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((500, 375), Image.Resampling.BICUBIC)
            arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (375, 500, 3))
            yield Image.fromarray(arr.clip(0, 255).astype(np.uint8)), i % 1000

    write_webdataset_shards(images(), out, shard_size=max(1, n // 16), fmt="jpg")
    return out


def measure(shards: str, workers: int, n_images: int, size: int, batch: int, buffer: int) -> float:
    ds = WebDatasetShards(
        shards,
        ImageTransform(size, random_resized_crop=(0.4, 1.0), hflip=True),
        shuffle_shards=True,
        shuffle_buffer=buffer,
        resampled=True,
        epoch_size=10**9,
    )
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, drop_last=True, persistent_workers=False)
    it = iter(loader)
    next(it)  # worker start-up and shuffle-buffer fill are not throughput
    t0, seen = time.perf_counter(), 0
    while seen < n_images:
        seen += next(it)["image"].shape[0]
    dt = time.perf_counter() - t0
    del it
    return seen / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default=None, help="shard folder / glob (default: write synthetic JPEG shards)")
    ap.add_argument("--synthetic", type=int, default=512, help="synthetic images to write")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="num_workers settings to time")
    ap.add_argument("--images", type=int, default=512, help="images timed per setting")
    ap.add_argument("--size", type=int, default=256, help="output side (random-resized crop, scale 0.4-1.0)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shuffle-buffer", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or str(synthetic_shards(Path(tmp) / "shards", args.synthetic))
        print(
            f"shards={shards if args.shards else f'synthetic ({args.synthetic} JPEG 500x375)'} size={args.size} "
            f"batch={args.batch_size} shuffle_buffer={args.shuffle_buffer} crop scale=(0.4, 1.0) hflip"
        )
        print(f"{'num_workers':>11} {'images/s':>10} {'per worker':>11}")
        for w in args.workers:
            rate = measure(shards, w, args.images, args.size, args.batch_size, args.shuffle_buffer)
            print(f"{w:>11} {rate:>10.1f} {rate / max(w, 1):>11.1f}")


if __name__ == "__main__":
    main()
