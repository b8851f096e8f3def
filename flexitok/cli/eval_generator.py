"""``flexitok eval generator``: FD per (tokens, generator CFG scale) and class accuracy of generated samples."""

from __future__ import annotations

import argparse
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
from flexitok.errors import InvalidInputError
from flexitok.models.generator import DEFAULT_GENERATOR
from flexitok.pipelines import DEFAULT_TOKENIZER
from flexitok.utils.device import resolve_device


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


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
    add_data_args(p)
    p.add_argument("--features", default="efflite0", help="feature extractor: efflite0 (offline) or inception")
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
    p.add_argument("-n", "--num-samples", type=positive_int, default=1000)
    p.add_argument("--batch-size", type=positive_int, default=64)
    add_ar_sampling_args(p, cfg_scale=False)
    add_decode_args(p, guidance_flag="--decoder-guidance", seed_help="base seed; sample i uses seed + i")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", metavar="FILE", default=None, help="also write the rows as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flexitok.data import DataConfig, build_dataset
    from flexitok.eval.features import build_extractor
    from flexitok.eval.generation import GenerationEvalConfig, evaluate_generation, format_table, reference_features
    from flexitok.io.checkpoint import atomic_write_json
    from flexitok.models.classifier import SmallCNN
    from flexitok.pipelines import GenerationPipeline

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
    dataset = build_dataset(
        DataConfig(kind=args.data, path=args.data_path, split=args.split, image_size=size, limit=args.num_samples)
    )
    extractor = build_extractor(args.features, device)
    ref, labels, captions = reference_features(extractor, dataset, args.num_samples, args.batch_size)
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
