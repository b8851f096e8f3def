"""``flexitok eval``: reconstruction quality (PSNR, SSIM, FD-EffLite0) vs number of kept tokens."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexitok.cli.common import (
    add_batch_size_arg,
    add_decode_args,
    add_model_args,
    decode_config,
    info,
    load_model,
    model_reference,
    positive_int,
)
from flexitok.errors import InvalidInputError
from flexitok.utils.device import resolve_device


def parse_ks(text: str, n_registers: int) -> list[int] | None:
    """``"1,2,4"`` -> ``[1, 2, 4]``; ``"all"`` -> None (powers of two up to N)."""
    if text.strip().lower() == "all":
        return None
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidInputError(f"--ks must be comma-separated integers such as 1,2,4,8; got {text!r}") from None
    bad = [k for k in ks if not 1 <= k <= n_registers]
    if not ks or bad:
        raise InvalidInputError(f"--ks values must lie in 1..{n_registers} (this model's tokens); got {text!r}")
    return ks


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="measure reconstruction PSNR/SSIM/FD-EffLite0 vs number of tokens",
        description="Tokenize images once, decode them from the first k tokens for each k, and report PSNR, "
        "SSIM and the Frechet distance on EfficientNet-Lite0 features (FD-EffLite0, not comparable to FID). "
        "Writes results.json, results.md, metrics_vs_k.png and examples.png into --out.",
    )
    add_model_args(p)
    p.add_argument(
        "--data", default="fashion_mnist", choices=["fashion_mnist", "folder", "webdataset", "skimage"], help="dataset"
    )
    p.add_argument("--data-path", default=None, help="dataset location (folder/shards; Fashion-MNIST has a default)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="dataset split (default test)")
    p.add_argument("-n", "--n-images", type=positive_int, default=256, help="images to evaluate (default 256)")
    p.add_argument(
        "--ks",
        default="all",
        help="token counts, comma-separated (e.g. 1,2,4,8,16,32), or 'all' = 1,2,4,...,N (default)",
    )
    p.add_argument(
        "--extractor",
        default="efflite0",
        choices=["efflite0", "inception", "none"],
        help="features for the Frechet distance (default efflite0 = FD-EffLite0, offline)",
    )
    p.add_argument("--examples", type=int, default=8, help="images shown per row in examples.png (0: none)")
    add_decode_args(p)
    add_batch_size_arg(p, default=16)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flexitok.data import DataConfig, build_dataset
    from flexitok.eval.reconstruction import evaluate_reconstruction, markdown_table, write_reconstruction_report

    device = resolve_device(args.device)
    model = load_model(args.model, device)
    ks = parse_ks(args.ks, model.n_registers)
    h, w = model.image_size
    if h != w:
        raise InvalidInputError(f"flexitok eval needs a square-image model, this one takes {h}x{w}")
    dataset = build_dataset(
        DataConfig(kind=args.data, path=args.data_path, split=args.split, image_size=h, limit=args.n_images)
    )
    info(f"evaluating {args.model} on {args.data}/{args.split}: {args.n_images} images, ks={ks or 'all'}")
    result = evaluate_reconstruction(
        model,
        dataset,
        ks=ks,
        n_images=args.n_images,
        batch_size=args.batch_size,
        decode=decode_config(args),
        extractor=None if args.extractor == "none" else args.extractor,
        n_examples=max(0, args.examples),
    )
    extra = {"model": model_reference(args.model), "data": args.data, "split": args.split}
    paths = write_reconstruction_report(result, args.out, extra=extra)
    print(markdown_table(result), end="")
    info("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
