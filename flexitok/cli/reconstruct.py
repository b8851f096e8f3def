"""``flexitok reconstruct``: a coarse-to-fine grid, one row per image: the input, then one column per token count."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flexitok.cli.common import (
    add_batch_size_arg,
    add_decode_args,
    add_image_size_args,
    add_model_args,
    collect_image_paths,
    decode_config,
    image_size_rule,
    info,
    load_model,
    parse_token_counts,
)
from flexitok.errors import InvalidInputError
from flexitok.io.images import is_image_file, letterbox, load_image, save_grid
from flexitok.utils.device import resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="coarse-to-fine reconstruction grid",
        description="Tokenize images and decode them from the first k tokens for several k. The grid has one row "
        "per image: the (converted) input first, then one column per k. Images are center-cropped and resized to "
        "the model's resolution, or to --size, or kept at their own aspect ratio with --keep-aspect (cells of "
        "different sizes are centred on white).",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument(
        "--tokens",
        metavar="K1,K2,...",
        default="all",
        help="token counts to decode from (default all: 1, 2, 4, ... up to the model's N, plus N)",
    )
    p.add_argument("-o", "--output", required=True, metavar="GRID.png", help="output grid image")
    add_model_args(p)
    add_image_size_args(p)
    add_decode_args(p)
    add_batch_size_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if not is_image_file(output):
        raise InvalidInputError(f"--output must be an image file name such as grid.png, got {args.output!r}")
    paths = collect_image_paths(args.inputs)
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    ks = parse_token_counts(args.tokens, model.n_registers)

    size_rule = image_size_rule(args, model)
    originals = []
    for path in paths:
        loaded = load_image(path, size_rule)
        if loaded.note:
            info(f"{path}: {loaded.note}")
        originals.append(loaded.tensor)
    sizes = [(int(t.shape[1]), int(t.shape[2])) for t in originals]
    same = len(set(sizes)) == 1
    tokens = [
        row
        for i in range(0, len(paths), args.batch_size)
        for row in model.tokenize(
            torch.stack(originals[i : i + args.batch_size]).to(device)
            if same
            else [t.to(device) for t in originals[i : i + args.batch_size]]
        )
    ]

    # One noise draw per image, shared by all its columns, so a row differs only in the number of tokens.
    decode = decode_config(args)
    noise = model.initial_noise_list(len(paths), decode.generator(), sizes)
    jobs = [(i, k) for i in range(len(paths)) for k in ks]
    decoded: dict[tuple[int, int], torch.Tensor] = {}
    for start in tqdm(
        range(0, len(jobs), args.batch_size),
        desc="decoding",
        unit="batch",
        disable=len(jobs) <= args.batch_size or None,
    ):
        chunk = jobs[start : start + args.batch_size]
        seqs = [tokens[i][:k] for i, k in chunk]
        images: torch.Tensor | list[torch.Tensor]
        if same:
            images = model.detokenize(
                seqs, decode, noise=torch.stack([noise[i] for i, _ in chunk]), image_size=sizes[0]
            )
        else:
            images = model.detokenize_list(
                seqs, decode, noise=[noise[i] for i, _ in chunk], image_size=[sizes[i] for i, _ in chunk]
            )
        for job, image in zip(chunk, images, strict=True):
            decoded[job] = image.float().cpu()

    if not same:  # one grid needs one cell size: centre every cell on white at the largest size
        cell = (max(h for h, _ in sizes), max(w for _, w in sizes))
        originals = [letterbox(t, cell) for t in originals]
        decoded = {job: letterbox(t, cell) for job, t in decoded.items()}
    rows = [[originals[i]] + [decoded[(i, k)] for k in ks] for i in range(len(paths))]
    save_grid(rows, output, labels=["input"] + [f"k={k}" for k in ks])
    info(f"wrote a {len(rows)} x {len(ks) + 1} grid to {output}")
    return 0
