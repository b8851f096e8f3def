"""``flexitok eval tokenizer``: reconstruction quality (PSNR, SSIM, FD-EffLite0) vs number of kept tokens."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexitok.cli.common import (
    add_batch_size_arg,
    add_data_args,
    add_decode_args,
    add_model_args,
    decode_config,
    info,
    load_model,
    model_reference,
    parse_token_counts,
    positive_int,
)
from flexitok.cli.eval_reference import add_extractor_arg
from flexitok.errors import InvalidInputError
from flexitok.utils.device import resolve_device


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tokenizer",
        help="measure reconstruction PSNR/SSIM/FD-EffLite0 vs number of tokens",
        description="Tokenize images once, decode them from the first k tokens for each k, and report PSNR, "
        "SSIM and the Frechet distance on EfficientNet-Lite0 features (FD-EffLite0, not comparable to FID). "
        "Writes results.json, results.md, metrics_vs_k.png and examples.png into --out.",
    )
    add_model_args(p)
    add_data_args(p, split=None)
    p.add_argument("--split", default="test", help="dataset split: any split folder that exists (default test)")
    p.add_argument("-n", "--n-images", type=positive_int, default=256, help="images to evaluate (default 256)")
    p.add_argument(
        "--tokens",
        "--ks",
        dest="tokens",
        metavar="K1,K2,...",
        default="all",
        help="token counts, comma-separated (e.g. 1,2,4,8,16,32), or 'all' = 1,2,4,...,N (default)",
    )
    add_extractor_arg(p, allow_none=True)
    p.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="REF.npz",
        help="also report the Frechet distance of the reconstructions to these statistics (eval reference, ADM)",
    )
    p.add_argument(
        "--subset-seed",
        type=int,
        default=None,
        metavar="S",
        help="evaluate a random subset of -n images drawn with seed S (default: the first -n images)",
    )
    p.add_argument("--examples", type=int, default=8, help="images shown per row in examples.png (0: none)")
    add_decode_args(p)
    add_batch_size_arg(p, default=16)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flexitok.data import DataConfig, build_dataset
    from flexitok.eval.features import build_extractor
    from flexitok.eval.reconstruction import evaluate_reconstruction, markdown_table, write_reconstruction_report
    from flexitok.eval.reference import check_extractor, complete_reference, load_reference

    device = resolve_device(args.device)
    reference = load_reference(args.reference) if args.reference is not None else None
    if reference is not None and args.extractor == "none":
        raise InvalidInputError("--reference needs features: give --extractor")
    if reference is not None:
        check_extractor(reference, args.extractor, str(args.reference))  # before loading any network
    extractor = None if args.extractor == "none" else build_extractor(args.extractor, device)
    if reference is not None and extractor is not None:
        check_extractor(reference, extractor, str(args.reference))
        if reference.assumed_extractor:
            info(f"{args.reference} has no extractor metadata: taking it as FID Inception statistics (ADM's files)")
        reference = complete_reference(reference, extractor, args.batch_size)
    model = load_model(args.model, device)
    ks = parse_token_counts(args.tokens, model.n_registers)
    h, w = model.image_size
    if h != w:
        raise InvalidInputError(f"flexitok eval tokenizer needs a square-image model, this one takes {h}x{w}")
    dataset = build_dataset(
        DataConfig(
            kind=args.data,
            path=args.data_path,
            split=args.split,
            image_size=h,
            limit=args.n_images if args.subset_seed is None else None,
        )
    )
    if args.subset_seed is not None:
        from torch.utils.data import IterableDataset, Subset

        from flexitok.eval.reference import select_indices

        if isinstance(dataset, IterableDataset):
            raise InvalidInputError("--subset-seed needs an indexable dataset (folder, fashion_mnist, skimage)")
        dataset = Subset(dataset, select_indices(None, len(dataset), args.n_images, args.subset_seed, False))  # type: ignore[arg-type]
    info(f"evaluating {args.model} on {args.data}/{args.split}: {args.n_images} images, ks={','.join(map(str, ks))}")
    result = evaluate_reconstruction(
        model,
        dataset,
        ks=ks,
        n_images=args.n_images,
        batch_size=args.batch_size,
        decode=decode_config(args),
        extractor=extractor,
        n_examples=max(0, args.examples),
        reference=reference,
    )
    extra = {"model": model_reference(args.model), "data": args.data, "split": args.split}
    if args.reference is not None:
        extra["reference"] = str(args.reference)
    paths = write_reconstruction_report(result, args.out, extra=extra)
    print(markdown_table(result), end="")
    info("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
