"""``flexitok train classifier``: train the small CNN used to score class-conditional generations."""

from __future__ import annotations

import argparse
from collections.abc import Sized

from flexitok.cli.common import LABELLED_DATA_KINDS, add_data_args, info, positive_int
from flexitok.errors import DatasetError
from flexitok.models.classifier import ClassifierConfig, accuracy, train_classifier
from flexitok.utils.device import resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classifier",
        help="train the small CNN classifier used by `eval generator`",
        description="Train a small CNN on a labelled dataset (default Fashion-MNIST) at a given resolution and save "
        "it as a model folder (config.json + model.safetensors); prints its test accuracy.",
    )
    add_data_args(p, split=None, kinds=LABELLED_DATA_KINDS)
    p.add_argument("--image-size", type=positive_int, default=32, help="the tokenizer's resolution (default 32)")
    p.add_argument("--steps", type=positive_int, default=2000)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=positive_int, default=32)
    p.add_argument("--limit", type=positive_int, default=None, help="train on the first N items only")
    p.add_argument("--test-limit", type=positive_int, default=2000, help="test items for the accuracy report")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="output model folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from flexitok.data import FASHION_MNIST_CLASSES, DataConfig, build_dataset

    device = resolve_device(args.device)
    common = {"kind": args.data, "path": args.data_path, "image_size": args.image_size}
    train_ds = build_dataset(DataConfig(split="train", limit=args.limit, **common))
    if not isinstance(train_ds, Sized):
        raise DatasetError(f"train classifier needs a dataset with a length; --data {args.data} streams")
    names = FASHION_MNIST_CLASSES if args.data == "fashion_mnist" else None
    num_classes = len(names) if names else int(max(int(train_ds[i]["label"]) for i in range(len(train_ds)))) + 1
    cfg = ClassifierConfig(image_size=args.image_size, num_classes=num_classes, width=args.width, class_names=names)
    model = train_classifier(train_ds, cfg, args.steps, args.batch_size, args.lr, device, args.seed)
    test_ds = build_dataset(DataConfig(split="test", limit=args.test_limit, **common))
    assert isinstance(test_ds, Sized)  # the same kind as the training split
    items = [test_ds[i] for i in range(len(test_ds))]
    images = torch.stack([it["image"] for it in items])
    labels = torch.tensor([int(it["label"]) for it in items])
    acc = accuracy(model, images, labels)
    model.save_pretrained(args.output)
    info(f"test accuracy {acc:.4f} on {len(items)} images; wrote {args.output}")
    return 0
