"""``flexitok eval reference``: reference statistics (ADM npz keys) of a seeded random or class-balanced subset."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexitok.cli.common import add_data_args, info, positive_int
from flexitok.errors import InvalidInputError
from flexitok.utils.device import resolve_device

EXTRACTOR_HELP = (
    "features: efflite0 (FD-EffLite0, offline; default), inception (the standard FID Inception; weights from "
    "$FLEXITOK_INCEPTION_WEIGHTS, the torch hub cache or one download) or inception:FILE (a local "
    "pt_inception-2015-12-05-6726825d.pth)"
)


def add_extractor_arg(parser: argparse.ArgumentParser, allow_none: bool = False) -> None:
    """``--extractor`` (the one flag name of every eval command)."""
    parser.add_argument(
        "--extractor",
        default="efflite0",
        metavar="NAME[:FILE]",
        help=EXTRACTOR_HELP + ("; none: no Frechet distance" if allow_none else ""),
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reference",
        help="write reference statistics (mu, sigma: ADM's npz keys) of a random or class-balanced subset",
        description="Extract features of -n images drawn at random (seeded) or class-balanced from a dataset split "
        "and write their mean and covariance in the ADM evaluator's npz keys (mu, sigma), with the features "
        "(for precision/recall) and what they were computed from. `eval tokenizer` and `eval generator` read "
        "the file with --reference.",
    )
    add_data_args(p, split=None)
    p.add_argument("--split", default="train", help="dataset split: any split folder that exists (default train)")
    p.add_argument("--image-size", type=positive_int, default=256, help="images are resized+cropped to this first")
    add_extractor_arg(p)
    p.add_argument("-n", "--num-images", type=positive_int, default=50000, help="images in the subset (default 50000)")
    p.add_argument("--seed", type=int, default=0, help="subset seed (default 0)")
    p.add_argument("--balanced", action="store_true", help="the same number of images from every class")
    p.add_argument("--no-features", action="store_true", help="store only mu and sigma (no precision/recall)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("-o", "--output", required=True, type=Path, help="the reference .npz to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flexitok.data import DataConfig, build_dataset
    from flexitok.eval.features import build_extractor, extractor_name
    from flexitok.eval.reference import reference_from_features, reference_subset_features, save_reference

    if args.output.suffix != ".npz":
        raise InvalidInputError(f"the reference file must end in .npz, got {args.output}")
    if args.workers < 0:
        raise InvalidInputError(f"--workers must be >= 0, got {args.workers}")
    name = extractor_name(args.extractor)
    dataset = build_dataset(
        # No shuffle buffer: the seeded subset of a stream must see the same order every run.
        DataConfig(kind=args.data, path=args.data_path, split=args.split, image_size=args.image_size, shuffle_buffer=0)
    )
    extractor = build_extractor(args.extractor, resolve_device(args.device))
    feats, labels, _ = reference_subset_features(
        extractor, dataset, args.num_images, args.seed, args.balanced, args.batch_size, args.workers
    )
    if len(feats) < 2:
        raise InvalidInputError("need at least 2 reference images")
    meta = {
        "data": args.data,
        "path": "" if args.data_path is None else str(args.data_path),
        "split": args.split,
        "seed": args.seed,
        "balanced": bool(args.balanced),
        "image_size": args.image_size,
    }
    ref = reference_from_features(feats, name, meta, keep_features=not args.no_features)
    ref.labels = labels.numpy()
    save_reference(args.output, ref)
    how = "class-balanced" if args.balanced else "random"
    info(
        f"wrote {args.output}: {name} statistics ({ref.dim}-d) of {len(feats)} {how} images (seed {args.seed}) "
        f"from {args.data}{' ' + str(args.data_path) if args.data_path else ''} split {args.split}"
    )
    return 0
