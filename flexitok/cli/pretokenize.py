"""``flexitok pretokenize``: run a tokenizer over a dataset once and write token shards for generator training.

Resumable (``--resume`` after any interruption, kill -9 included) and distributed: under ``torchrun`` every rank
tokenizes a contiguous range of shards and rank 0 writes the index; the set is identical to a one-process run's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from flexitok.cli.common import (
    add_batch_size_arg,
    add_data_args,
    add_model_args,
    info,
    load_model,
    model_reference,
    positive_int,
)
from flexitok.errors import InvalidInputError
from flexitok.utils.device import resolve_device

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretokenize",
        help="tokenize a dataset into token shards (for `flexitok train generator`)",
        description="Run a FlexTok tokenizer over a dataset once and write token shards with labels, captions and "
        "class names. Resumable (--resume) and distributed (run it under torchrun: each rank tokenizes its share).",
    )
    add_model_args(p)
    add_data_args(p, default=None, split="train")
    p.add_argument("--limit", type=int, default=None, help="only the first N items (per input shard for webdataset)")
    p.add_argument("-o", "--output", required=True, help="output folder for the shard set")
    p.add_argument(
        "--shard-size",
        type=positive_int,
        default=65536,
        help="items per shard file (default 65536; webdataset: one output shard per input tar)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard set")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run with the same settings (finished shards are kept); without it a "
        "leftover work folder is removed",
    )
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per rank (default 0)")
    p.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="fp32",
        help="encoder precision (bf16: autocast; meant for GPUs, emulated and slow on most CPUs)",
    )
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's)")
    add_batch_size_arg(p, default=64)
    p.set_defaults(func=run)


def dataset_class_names(dataset: Any) -> list[str] | None:
    """The dataset's class names (label i is name i): ``class_names`` (data contract), else ``classes``."""
    names = getattr(dataset, "class_names", None)
    if names is None:
        names = getattr(dataset, "classes", None)
    return [str(n) for n in names] if names else None


def _distributed(device: torch.device) -> tuple[int, int, Callable[[], None] | None]:
    """(rank, world size, barrier): torchrun sets WORLD_SIZE/RANK; gloo on CPU, NCCL on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(hours=2))
    return dist.get_rank(), dist.get_world_size(), dist.barrier


def _device(name: str) -> torch.device:
    device = resolve_device(name)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


def run(args: argparse.Namespace) -> int:
    from flexitok.data import DataConfig, build_dataset
    from flexitok.data.tokens import PretokenizeJob, pretokenize_dataset, pretokenize_streams

    if args.limit is not None and args.limit < 1:
        raise InvalidInputError(f"--limit must be >= 1, got {args.limit}")
    if args.workers < 0:
        raise InvalidInputError(f"--workers must be >= 0, got {args.workers}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    model = load_model(args.model, device)
    h, w = model.image_size
    if h != w:
        raise InvalidInputError(f"pretokenize supports square tokenizers only, this one takes {h}x{w} images")
    cfg = DataConfig(kind=args.data, path=args.data_path, split=args.split, image_size=h, limit=args.limit)
    if args.data == "webdataset":
        cfg.shuffle_buffer = 0  # keep each tar's order: shard i is input tar i, whatever the rank count
    dataset = build_dataset(cfg)
    meta: dict[str, Any] = {
        "tokenizer": model_reference(args.model),
        "vocab_size": model.vocab_size,
        "n_tokens": model.n_registers,
        "image_size": h,
        "dataset": args.data,
        "split": args.split,
        "dtype": args.dtype,
    }
    rank, world, barrier = _distributed(device)
    job = PretokenizeJob(
        out_dir=args.output,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        num_workers=args.workers,
        rank=rank,
        world_size=world,
        resume=args.resume,
        overwrite=args.overwrite,
        meta=meta,
        class_names=dataset_class_names(dataset),
    )
    dtype = DTYPES[args.dtype]

    def tokenize(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        with autocast:
            return model.tokenize(images)

    if hasattr(dataset, "__len__"):
        path = pretokenize_dataset(tokenize, dataset, job, barrier=barrier)
    else:
        tars = _input_tars(args.data_path, args.split)
        sources = [_tar_source(cfg, tar, args.batch_size) for tar in tars]
        path = pretokenize_streams(
            tokenize, sources, job, barrier=barrier, plan_extra={"inputs": [t.name for t in tars]}
        )
    if path is not None:
        info(f"wrote token shards to {path}")
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def _input_tars(data_path: str | None, split: str) -> list[Path]:
    from flexitok.data.splits import split_dir
    from flexitok.data.webdataset import resolve_shards

    if data_path is None:
        raise InvalidInputError("--data webdataset needs --data-path")
    root = Path(data_path)
    # A folder follows the split rule of every reader (no fallback to the root); explicit tars are read as given.
    spec: str | Path = split_dir(data_path, split, "webdataset") if root.is_dir() else data_path
    return resolve_shards(spec)


def _tar_source(cfg: Any, tar: Path, batch_size: int) -> Callable[[], Iterable[dict[str, Any]]]:
    """The batches of one input tar, in its order (decoded in this process)."""
    import dataclasses

    from flexitok.data import build_dataset
    from flexitok.data.base import collate_images

    def batches() -> Iterator[dict[str, Any]]:
        ds = build_dataset(dataclasses.replace(cfg, path=str(tar)))
        ds.set_rank(0, 1)  # type: ignore[attr-defined]  # the whole tar: ranks split by tar, not inside one
        yield from torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate_images)

    return batches
