"""``flexitok eval generator``: FD per (tokens, generator CFG scale) and class accuracy of generated samples."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from flexitok.cli.common import (
    add_ar_sampling_args,
    add_data_args,
    add_decode_args,
    ar_sampling_config,
    decode_config,
    info,
    parse_token_counts,
    positive_int,
)
from flexitok.cli.eval_reference import add_extractor_arg
from flexitok.errors import InvalidInputError
from flexitok.models.generator import DEFAULT_GENERATOR
from flexitok.pipelines import DEFAULT_TOKENIZER, GenerationPipeline
from flexitok.utils.device import resolve_device


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def format_table(rows: list[dict[str, float | int | str]]) -> str:
    from flexitok.eval.generation import format_table as table

    return table(rows)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generator",
        help="FD and classifier accuracy of generated images per token count and CFG scale",
        description="Generate images for a sweep of token counts and generator CFG scales and report the Frechet "
        "distance to a reference split (FD-EffLite0 offline by default) and, for class-conditioned generators, "
        "the accuracy of an in-repo classifier (see `flexitok train classifier`).",
    )
    p.add_argument("--generator", default=DEFAULT_GENERATOR)
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    add_data_args(p, split=None)
    p.add_argument("--split", default="test", help="dataset split: any split folder that exists (default test)")
    add_extractor_arg(p)
    p.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="REF.npz",
        help="paper protocol: compare with these statistics (eval reference, or ADM's reference batches) instead "
        "of --data; needs --out, where each cell's samples are written as an ADM sample npz",
    )
    p.add_argument("--out", type=Path, default=None, help="sample folder (one sub-folder per cell) with --reference")
    p.add_argument("--resume", action="store_true", help="continue the samples already in --out")
    p.add_argument(
        "--chunk-size", type=positive_int, default=1000, help="samples per chunk file (the resume unit; default 1000)"
    )
    p.add_argument(
        "--classifier", default=None, help="classifier for the accuracy column: a folder, or the bundled fmnist32"
    )
    p.add_argument(
        "--tokens",
        metavar="K1,K2,...",
        default="all",
        help="token counts, e.g. 1,4,16, or 'all' = 1,2,4,...,N (default)",
    )
    p.add_argument("--cfg-scales", type=_floats, default=(1.0, 3.0), help="generator CFG scales (default 1,3)")
    p.add_argument(
        "-n", "--num-samples", type=positive_int, default=1000, help="samples per cell (paper protocol: 50000)"
    )
    p.add_argument("--batch-size", type=positive_int, default=64)
    add_ar_sampling_args(p, cfg_scale=False)
    add_decode_args(p, guidance_flag="--decoder-guidance", seed_help="base seed; sample i uses seed + i")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", metavar="FILE", default=None, help="also write the rows as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.reference is not None:
        return run_reference(args)
    if args.out is not None or args.resume:
        raise InvalidInputError("--out and --resume belong to the paper protocol: give --reference REF.npz")
    from flexitok.data import DataConfig, build_dataset
    from flexitok.eval.features import build_extractor
    from flexitok.eval.generation import GenerationEvalConfig, evaluate_generation, reference_features
    from flexitok.models.classifier import SmallCNN
    from flexitok.utils.files import atomic_write_json

    device = resolve_device(args.device)
    pipe = GenerationPipeline.from_pretrained(args.generator, args.tokenizer, device=device)
    tokens = tuple(parse_token_counts(args.tokens, pipe.generator.config.n_tokens))
    cfg = GenerationEvalConfig(
        token_counts=tokens,
        cfg_scales=args.cfg_scales,
        n_samples=args.num_samples,
        batch_size=args.batch_size,
        sampling=ar_sampling_config(args),
        decode=decode_config(args),
    )
    size = pipe.tokenizer.image_size[0]
    dataset = build_dataset(DataConfig(kind=args.data, path=args.data_path, split=args.split, image_size=size))
    extractor = build_extractor(args.extractor, device)
    ref, labels, captions = reference_features(extractor, dataset, args.num_samples, args.batch_size, seed=args.seed)
    if len(ref) < 2:
        raise InvalidInputError("need at least 2 reference images for a Frechet distance")
    cfg.n_samples = min(cfg.n_samples, len(ref))
    if pipe.conditioning.needs_text_encoder:
        from flexitok.models.text_encoder import CachedTextEncoder, TextEncoder

        # Fashion-MNIST has ten captions: encode each once.
        pipe = GenerationPipeline(
            pipe.generator, pipe.tokenizer, CachedTextEncoder(TextEncoder(pipe.generator.config.text_encoder))
        )
    classifier = SmallCNN.from_pretrained(args.classifier, device) if args.classifier else None
    rows = evaluate_generation(pipe, extractor, ref, cfg, labels=labels, prompts=captions, classifier=classifier)
    print(format_table(rows))
    if args.json:
        atomic_write_json(Path(args.json), {"generator": args.generator, "tokenizer": args.tokenizer, "rows": rows})
        info(f"wrote {args.json}")
    return 0


def run_reference(args: argparse.Namespace) -> int:
    """The paper protocol: per cell, N class-balanced samples -> OUT/tokens{k}_cfg{s}/samples_NxHxWx3.npz
    (resumable, split over torchrun ranks), then FID / IS / precision / recall against --reference."""
    from flexitok.eval.features import build_extractor
    from flexitok.eval.reference import check_extractor, complete_reference, load_reference
    from flexitok.eval.samples import SampleJob, dist_context, generate_samples, sample_metrics
    from flexitok.utils.files import atomic_write_json

    if args.out is None:
        raise InvalidInputError("--reference needs --out: the folder for the sample npz files")
    ctx = dist_context()
    device = resolve_device(args.device)
    if ctx.world_size > 1 and device.type == "cuda":
        import torch

        device = torch.device("cuda", torch.cuda.current_device())
    reference = load_reference(args.reference)
    check_extractor(reference, args.extractor, str(args.reference))  # before loading any network
    extractor = build_extractor(args.extractor, device) if ctx.is_main else None
    if extractor is not None:
        check_extractor(reference, extractor, str(args.reference))
        if reference.assumed_extractor:
            info(f"{args.reference} has no extractor metadata: taking it as FID Inception statistics (ADM's files)")
    pipe = GenerationPipeline.from_pretrained(args.generator, args.tokenizer, device=device)
    tokens = tuple(parse_token_counts(args.tokens, pipe.generator.config.n_tokens))
    sampling = ar_sampling_config(args)
    rows: list[dict[str, float | int | str]] = []
    for k in tokens:
        for scale in args.cfg_scales:
            job = SampleJob(
                n=args.num_samples,
                n_tokens=k,
                sampling=dataclasses.replace(sampling, guidance_scale=scale),
                decode=decode_config(args),
                chunk_size=args.chunk_size,
                batch_size=args.batch_size,
            )
            cell = args.out / f"tokens{k}_cfg{scale:g}"
            npz = generate_samples(pipe, job, cell, resume=args.resume, ctx=ctx)
            if npz is None or extractor is None:
                continue
            info(f"wrote {npz}")
            reference = complete_reference(reference, extractor, args.batch_size)
            row: dict[str, float | int | str] = {"tokens": k, "cfg_scale": scale, "samples": str(npz)}
            row.update(sample_metrics(npz, extractor, reference, args.batch_size))
            rows.append(row)
    if not ctx.is_main:
        return 0
    print(format_table([{k: v for k, v in r.items() if k != "samples"} for r in rows]))
    if args.json:
        atomic_write_json(
            Path(args.json),
            {
                "generator": args.generator,
                "tokenizer": args.tokenizer,
                "reference": str(args.reference),
                "extractor": args.extractor,
                "n": args.num_samples,
                "rows": rows,
            },
        )
        info(f"wrote {args.json}")
    return 0
