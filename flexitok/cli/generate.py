"""``flexitok generate``: sample images with an AR generator and its tokenizer (:class:`GenerationPipeline`).

flexitok generate --class 3 --tokens 32 -n 16 -o grid.png
flexitok generate --prompt "a sneaker" --tokens 64 -n 8 --cfg-scale 3 -o sneakers.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import Tensor

from flexitok.cli.common import (
    add_ar_sampling_args,
    add_batch_size_arg,
    add_decode_args,
    ar_sampling_config,
    decode_config,
    info,
    model_reference,
    positive_int,
)
from flexitok.codec.token_files import TokenFile, check_token_path, write_token_file
from flexitok.models.generator import DEFAULT_GENERATOR
from flexitok.pipelines import DEFAULT_TOKENIZER, GenerationPipeline, parse_classes
from flexitok.utils.device import resolve_device
from flexitok.utils.limits import MAX_GRID_SAMPLES, MAX_SAMPLES_STREAMED, check_num_samples, check_prompts

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate images: AR generator -> tokens -> tokenizer decoder",
        description="Sample FlexTok token sequences with an autoregressive generator and decode them into images.",
    )
    p.add_argument(
        "--generator", default=DEFAULT_GENERATOR, help=f"generator folder or bundled name ({DEFAULT_GENERATOR!r})"
    )
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help=f"tokenizer folder or name ({DEFAULT_TOKENIZER!r})")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--class", dest="classes", default=None, help="class id(s) or name(s), comma-separated; cycled")
    cond.add_argument(
        "--prompt", dest="prompts", action="append", default=None, help="text prompt (repeatable; cycled)"
    )
    p.add_argument("--tokens", type=positive_int, default=None, help="tokens per image, 1..N (default: all N)")
    p.add_argument(
        "-n",
        "--num-samples",
        type=positive_int,
        default=16,
        help=f"number of images (default 16; at most {MAX_GRID_SAMPLES} in a grid, {MAX_SAMPLES_STREAMED} as single "
        "images, written as each batch is decoded)",
    )
    p.add_argument("-o", "--output", required=True, help="grid image (e.g. grid.png) or a folder for single images")
    add_decode_args(
        p,
        guidance_flag="--decoder-guidance",
        seed_help="base seed; sample i uses seed + i for its tokens and seed + 10**6 + i for its decoder noise",
    )
    p.add_argument(
        "--save-tokens",
        default=None,
        metavar="FILE",
        help="also save the sampled tokens [n, K] as a token file (.json or .npy, as `flexitok tokenize` writes)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    add_ar_sampling_args(p)
    add_batch_size_arg(p, default=16)
    p.set_defaults(func=run)


def _cycle(items: list, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


def run(args: argparse.Namespace) -> int:
    from flexitok.io.images import save_grid, save_image

    out = Path(args.output)
    grid = out.suffix.lower() in _IMAGE_SUFFIXES
    # Cheap checks before any model is loaded: a grid is held in memory whole, single images are written as
    # each batch is decoded.
    n = check_num_samples(args.num_samples, MAX_GRID_SAMPLES if grid else MAX_SAMPLES_STREAMED, "-n")
    prompts = _cycle(check_prompts(args.prompts), n) if args.prompts is not None else None
    if args.save_tokens:
        check_token_path(args.save_tokens)
    device = resolve_device(args.device)
    pipe = GenerationPipeline.from_pretrained(args.generator, args.tokenizer, device=device)
    labels = _cycle(parse_classes(args.classes, pipe.conditioning), n) if args.classes is not None else None
    k = args.tokens or pipe.generator.config.n_tokens
    batches = pipe.iter_batches(
        labels=labels,
        prompts=prompts,
        num_samples=n,
        n_tokens=k,
        sampling=ar_sampling_config(args),
        decode=decode_config(args),
        batch_size=args.batch_size,
        progress=True,
    )
    tokens: list[Tensor] = []
    images: list[Tensor] = []  # grid only
    if not grid:
        out.mkdir(parents=True, exist_ok=True)
    for batch in batches:
        if grid:
            images.append(batch.images)
        else:
            for i, img in enumerate(batch.images):
                save_image(img, out / f"sample_{len(tokens) + i:04d}.png")
        tokens += list(batch.tokens)
    if grid:
        save_grid(_rows(torch.cat(images)), out)
        info(f"wrote {n} samples ({k} tokens each) to {out}")
    else:
        info(f"wrote {n} images ({k} tokens each) to {out}/")
    if args.save_tokens:
        tok = pipe.tokenizer
        meta = TokenFile(tokens, model_reference(args.tokenizer), tok.image_size, tok.vocab_size, tok.n_registers)
        write_token_file(args.save_tokens, meta)
        info(f"wrote the tokens to {args.save_tokens}")
    return 0


def _rows(images: Tensor) -> list[Tensor]:
    per_row = math.ceil(math.sqrt(images.shape[0]))
    return [images[i : i + per_row] for i in range(0, images.shape[0], per_row)]
