"""``flexitok tokenize``: images -> token ids (JSON or .npy)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flexitok.cli.common import (
    ConversionNotes,
    add_batch_size_arg,
    add_image_size_args,
    add_model_args,
    add_verbose_arg,
    collect_image_paths,
    image_size_rule,
    info,
    load_model,
    model_reference,
    positive_int,
)
from flexitok.codec.token_files import TokenFile, tokens_to_json, write_token_file
from flexitok.errors import InvalidInputError
from flexitok.io.images import load_image
from flexitok.utils.device import resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenize",
        help="images -> token ids",
        description="Tokenize images into ordered 1D token sequences (coarse to fine). Images of any size and mode "
        "are converted to RGB, center-cropped and resized to the model's resolution (or to --size, or to their own "
        "aspect ratio with --keep-aspect).",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("-o", "--output", metavar="FILE", help="tokens file, .json or .npy (default: print JSON to stdout)")
    p.add_argument(
        "-k", "--num-tokens", type=positive_int, default=None, help="keep only the first K tokens of each image"
    )
    p.add_argument(
        "--skip-invalid", action="store_true", help="warn about and skip unreadable files instead of stopping"
    )
    add_image_size_args(p)
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="encode the VAE posterior mean even if the model samples it (official checkpoints with "
        "sample_posterior, the official default)",
    )
    add_model_args(p)
    add_batch_size_arg(p)
    add_verbose_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = collect_image_paths(args.inputs)
    if args.output is not None and Path(args.output).suffix.lower() not in (".json", ".npy"):
        raise InvalidInputError(f"--output must end in .json or .npy, got {args.output!r}")
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    if args.num_tokens is not None and args.num_tokens > model.n_registers:
        raise InvalidInputError(f"--num-tokens {args.num_tokens} exceeds this model's {model.n_registers} tokens")

    size_rule = image_size_rule(args, model)
    rows: list[torch.Tensor] = []
    sizes: list[tuple[int, int]] = []
    done: list[str] = []
    notes = ConversionNotes(args.verbose)
    bar = tqdm(total=len(paths), desc="tokenizing", unit="img", disable=len(paths) <= args.batch_size or None)
    for start in range(0, len(paths), args.batch_size):
        batch, names = [], []
        for path in paths[start : start + args.batch_size]:
            try:
                loaded = load_image(path, size_rule)
            except InvalidInputError as e:
                if not args.skip_invalid:
                    raise
                info(f"skipped: {e}")
                continue
            notes.add(path, loaded.note)
            batch.append(loaded.tensor)
            names.append(str(path))
        if batch:
            # A list: with --keep-aspect the images of a batch may differ in size.
            ids = model.tokenize([b.to(device) for b in batch], deterministic=True if args.deterministic else None)
            sizes.extend((int(b.shape[1]), int(b.shape[2])) for b in batch)
            if args.num_tokens is not None:
                ids = ids[:, : args.num_tokens]
            rows.extend(ids.cpu())
            done.extend(names)
        bar.update(len(paths[start : start + args.batch_size]))
    bar.close()
    notes.summary(len(paths))
    if not rows:
        raise InvalidInputError("none of the inputs could be read as an image")

    same = len(set(sizes)) == 1
    token_file = TokenFile(
        rows,
        model_reference(args.model),
        sizes[0] if same else None,
        model.vocab_size,
        model.n_registers,
        files=done,
        image_sizes=None if same else sizes,
    )
    if args.output is None:
        sys.stdout.write(tokens_to_json(token_file))
        return 0
    out = write_token_file(args.output, token_file)
    info(f"wrote {len(rows)} x {rows[0].numel()} tokens to {out}")
    return 0
