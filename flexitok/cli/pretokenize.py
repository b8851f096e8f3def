"""``flexitok pretokenize``: run a tokenizer over a dataset once and write token shards for generator training."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import torch
from tqdm import tqdm

from flexitok.cli.common import add_batch_size_arg, add_data_args, add_model_args, info, load_model, model_reference
from flexitok.errors import InvalidInputError
from flexitok.utils.device import resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretokenize",
        help="tokenize a dataset into token shards (for `flexitok train generator`)",
        description="Run a FlexTok tokenizer over a dataset once and write token shards with labels and captions.",
    )
    add_model_args(p)
    add_data_args(p, default=None, split="train")
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("-o", "--output", required=True, help="output folder for the shard set")
    p.add_argument("--shard-size", type=int, default=65536, help="items per shard file (default 65536)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard set")
    add_batch_size_arg(p, default=64)
    p.set_defaults(func=run)


def _batches(dataset: Any, batch_size: int) -> Iterator[dict[str, Any]]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    yield from loader


def dataset_class_names(dataset: Any) -> list[str] | None:
    """The dataset's class names (label i is name i): ``class_names`` (data contract), else ``classes``."""
    names = getattr(dataset, "class_names", None)
    if names is None:
        names = getattr(dataset, "classes", None)
    return [str(n) for n in names] if names else None


def run(args: argparse.Namespace) -> int:
    from flexitok.data import DataConfig, build_dataset
    from flexitok.data.tokens import write_token_shards

    if args.limit is not None and args.limit < 1:
        raise InvalidInputError(f"--limit must be >= 1, got {args.limit}")
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    h, w = model.image_size
    if h != w:
        raise InvalidInputError(f"pretokenize supports square tokenizers only, this one takes {h}x{w} images")
    dataset = build_dataset(
        DataConfig(kind=args.data, path=args.data_path, split=args.split, image_size=h, limit=args.limit)
    )
    meta: dict[str, Any] = {
        "tokenizer": model_reference(args.model),
        "vocab_size": model.vocab_size,
        "n_tokens": model.n_registers,
        "image_size": h,
        "dataset": args.data,
        "split": args.split,
    }
    class_names = dataset_class_names(dataset)
    total = len(dataset) if hasattr(dataset, "__len__") else None

    def tokenized() -> Iterator[dict[str, Any]]:
        bar = tqdm(total=total, desc="pretokenize", unit="img")
        for batch in _batches(dataset, args.batch_size):
            out: dict[str, Any] = {"tokens": model.tokenize(batch["image"].to(device)).cpu(), "label": batch["label"]}
            if "caption" in batch:
                out["caption"] = list(batch["caption"])
            bar.update(out["tokens"].shape[0])
            yield out
        bar.close()

    path = write_token_shards(
        tokenized(),
        args.output,
        shard_size=args.shard_size,
        meta=meta,
        overwrite=args.overwrite,
        class_names=class_names,
    )
    info(f"wrote token shards to {path}")
    return 0
