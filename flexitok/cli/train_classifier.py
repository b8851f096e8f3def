"""``flexitok train classifier``: train the small CNN used to score class-conditional generations.

Its command line is flags (no YAML config); they fill a :class:`flexitok.train.classifier.ClassifierTrainConfig`
that the common trainer runs (:func:`flexitok.train.run.run_config`).
"""

from __future__ import annotations

import argparse
import tempfile

from flexitok.cli.common import LABELLED_DATA_KINDS, add_data_args, info, positive_int
from flexitok.data import FASHION_MNIST_CLASSES, DataConfig, build_dataset
from flexitok.models.classifier import ClassifierConfig, SmallCNN, accuracy
from flexitok.train.classifier import ClassifierTaskConfig, ClassifierTrainConfig, test_images
from flexitok.train.run import TrainTarget, run_config
from flexitok.train.trainer_config import TrainerConfig


def register(sub: argparse._SubParsersAction, target: TrainTarget) -> None:
    p = sub.add_parser(
        "classifier",
        help=target.help,
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
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="output model folder")
    p.set_defaults(func=lambda args: run(args, target))


def _num_classes(data: DataConfig) -> tuple[int, tuple[str, ...] | None]:
    if data.kind == "fashion_mnist":
        return len(FASHION_MNIST_CLASSES), tuple(FASHION_MNIST_CLASSES)
    ds = build_dataset(data)
    names = getattr(ds, "class_names", None)  # one class mapping per root (image folders, shard indexes)
    if names:
        return len(names), tuple(names)
    return int(max(int(ds[i]["label"]) for i in range(len(ds)))) + 1, None  # type: ignore[arg-type]


def run(args: argparse.Namespace, target: TrainTarget) -> int:
    data = DataConfig(kind=args.data, path=args.data_path, image_size=args.image_size, limit=args.limit)
    num_classes, names = _num_classes(data)
    with tempfile.TemporaryDirectory(prefix="flexitok-classifier-") as run_dir:
        cfg = ClassifierTrainConfig(
            model=ClassifierConfig(
                image_size=args.image_size, num_classes=num_classes, width=args.width, class_names=names
            ),
            data=data,
            # AdamW (weight decay 0.05) with cosine decay to 0 and no clipping: the 0.1 classifier recipe.
            train=TrainerConfig(
                out_dir=run_dir,
                steps=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                betas=(0.9, 0.999),
                grad_clip=0.0,
                seed=args.seed,
                log_every=max(1, args.steps // 20),
                ckpt_every=args.steps,
                keep_checkpoints=1,
            ),
            task=ClassifierTaskConfig(export_to=args.output, test_limit=args.test_limit),
        )
        run_config(target, cfg)
    images, labels = test_images(cfg)
    acc = accuracy(SmallCNN.from_pretrained(args.output), images, labels)
    info(f"test accuracy {acc:.4f} on {len(labels)} images; wrote {args.output}")
    return 0
