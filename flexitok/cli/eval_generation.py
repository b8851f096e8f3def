"""``flexitok eval-generation``: FD per (tokens, generator CFG scale) and class accuracy of generated samples."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexitok.cli.common import info, load_model, positive_int, resolve_device
from flexitok.cli.generate import DEFAULT_TOKENIZER
from flexitok.errors import InvalidInputError
from flexitok.models.generator import DEFAULT_GENERATOR


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval-generation",
        help="FD and classifier accuracy of generated images per token count and CFG scale",
        description="Generate images for a sweep of token counts and generator CFG scales and report the Frechet "
        "distance to a reference split (FD-EffLite0 offline by default) and, for class-conditioned generators, "
        "the accuracy of an in-repo classifier (see `flexitok train-classifier`).",
    )
    p.add_argument("--generator", default=DEFAULT_GENERATOR)
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    p.add_argument("--data", default="fashion_mnist", choices=["fashion_mnist", "folder", "webdataset", "skimage"])
    p.add_argument("--data-path", default=None)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--features", default="efflite0", help="feature extractor: efflite0 (offline) or inception")
    p.add_argument(
        "--classifier", default=None, help="classifier for the accuracy column: a folder, or the bundled fmnist32"
    )
    p.add_argument("--tokens", type=_ints, default=None, help="token counts, e.g. 1,4,16 (default: powers of 4 and N)")
    p.add_argument("--cfg-scales", type=_floats, default=(1.0, 3.0), help="generator CFG scales (default 1,3)")
    p.add_argument("-n", "--num-samples", type=positive_int, default=1000)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--steps", type=positive_int, default=20, help="decoder Euler steps")
    p.add_argument("--decoder-guidance", type=float, default=7.5)
    p.add_argument("--no-apg", action="store_true", help="plain CFG instead of APG in the decoder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", metavar="FILE", default=None, help="also write the rows as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flexitok.cli.common import default_k_list
    from flexitok.cli.generate import check_pair
    from flexitok.data import DataConfig, build_dataset
    from flexitok.eval.features import build_extractor
    from flexitok.eval.generation import GenerationEvalConfig, evaluate_generation, format_table, reference_features
    from flexitok.io.checkpoint import atomic_write_json
    from flexitok.models.classifier import SmallCNN
    from flexitok.models.generator import Generator

    device = resolve_device(args.device)
    gen = Generator.from_pretrained(args.generator, device=device)
    tok = load_model(args.tokenizer, device)
    check_pair(gen, tok.vocab_size, tok.n_registers)
    tokens = args.tokens or tuple(default_k_list(gen.config.n_tokens))
    cfg = GenerationEvalConfig(
        token_counts=tokens,
        cfg_scales=args.cfg_scales,
        n_samples=args.num_samples,
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        decoder_steps=args.steps,
        decoder_guidance=args.decoder_guidance,
        apg=not args.no_apg,
        seed=args.seed,
    )
    size = tok.image_size[0]
    dataset = build_dataset(
        DataConfig(kind=args.data, path=args.data_path, split=args.split, image_size=size, limit=args.num_samples)
    )
    extractor = build_extractor(args.features, device)
    ref, labels, captions = reference_features(extractor, dataset, args.num_samples, args.batch_size)
    if len(ref) < 2:
        raise InvalidInputError("need at least 2 reference images for a Frechet distance")
    cfg.n_samples = min(cfg.n_samples, len(ref))
    text_encoder = None
    if gen.config.condition == "text":
        from flexitok.models.text_encoder import CachedTextEncoder, TextEncoder

        if not captions:
            raise InvalidInputError(f"dataset {args.data!r} has no captions to prompt a text-conditioned generator")
        text_encoder = CachedTextEncoder(TextEncoder(gen.config.text_encoder))
    classifier = SmallCNN.from_pretrained(args.classifier, device) if args.classifier else None
    # Class models are prompted with the reference split's labels so the FD compares like with like.
    use_labels = labels if (labels >= 0).all() and gen.config.condition != "none" else None
    rows = evaluate_generation(
        gen,
        tok,
        extractor,
        ref,
        cfg,
        labels=use_labels,
        prompts=captions,
        text_encoder=text_encoder,
        classifier=classifier,
    )
    print(format_table(rows))
    if args.json:
        atomic_write_json(Path(args.json), {"generator": args.generator, "tokenizer": args.tokenizer, "rows": rows})
        info(f"wrote {args.json}")
    return 0
