"""``flexitok detokenize``: a tokens file -> images."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm.auto import tqdm

from flexitok.cli.common import (
    DEFAULT_MODEL,
    add_batch_size_arg,
    add_decode_args,
    add_model_args,
    decode_config,
    image_size_arg,
    info,
    load_model,
    positive_int,
)
from flexitok.codec.token_files import read_token_file, validate_tokens
from flexitok.errors import InvalidInputError
from flexitok.io.images import is_image_file, save_image
from flexitok.utils.device import resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detokenize",
        help="token ids -> images",
        description="Decode a tokens file (.json from `flexitok tokenize`, or an integer .npy [B, K]) into images.",
    )
    p.add_argument("tokens", metavar="TOKENS", help="tokens file (.json or .npy)")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="PATH",
        help="output folder (one PNG per sequence, named after the source images when known); "
        "an image file name is accepted when the file holds one sequence",
    )
    p.add_argument(
        "-k", "--num-tokens", type=positive_int, default=None, help="decode only the first K tokens of each sequence"
    )
    p.add_argument(
        "--size",
        type=image_size_arg,
        metavar="HxW",
        help="output size (default: the size the tokens file records, else the model's native size)",
    )
    add_model_args(p, model_default=None)
    p.epilog = f"--model defaults to the model recorded in a JSON tokens file, else {DEFAULT_MODEL!r}."
    add_decode_args(p)
    add_batch_size_arg(p)
    p.set_defaults(func=run)


def _output_paths(output: Path, count: int, files: list[str] | None) -> list[Path]:
    if is_image_file(output):
        if count != 1:
            raise InvalidInputError(f"--output {output} is one image file but the tokens file holds {count} sequences")
        return [output]
    if output.exists() and not output.is_dir():
        raise InvalidInputError(f"--output {output} exists and is not a folder")
    if files is None:
        return [output / f"{i:05d}.png" for i in range(count)]
    paths, seen = [], set()
    for i, name in enumerate(files):
        stem = Path(name).stem
        if not stem or len(stem.encode("utf-8", "surrogateescape")) > 200:  # file systems allow 255 bytes a name
            stem = f"{i:05d}"
        candidate = stem if stem not in seen else f"{stem}_{i}"
        seen.add(candidate)
        paths.append(output / f"{candidate}.png")
    return paths


def run(args: argparse.Namespace) -> int:
    source = Path(args.tokens)
    token_file = read_token_file(source)
    tokens = token_file.tokens
    if args.num_tokens is not None:
        tokens = [t[: args.num_tokens] for t in tokens]
    outputs = _output_paths(Path(args.output), len(tokens), token_file.files)

    model_name = args.model or token_file.model or DEFAULT_MODEL
    device = resolve_device(args.device)
    model = load_model(model_name, device)
    validate_tokens(tokens, model.vocab_size, model.n_registers, str(source))
    # Output sizes: --size, else what the tokens file records (per image or one for all), else the native size.
    if args.size is not None:
        sizes = [args.size] * len(tokens)
    elif token_file.image_sizes is not None:
        sizes = list(token_file.image_sizes)
    else:
        sizes = [token_file.image_size or model.image_size] * len(tokens)
    for size in dict.fromkeys(sizes):
        try:
            model.check_image_size(size, "decoder")
        except InvalidInputError as e:
            raise InvalidInputError(f"{source}: {e}; pass --size HxW") from None

    # One CPU generator drawn image by image: the result for an image does not depend on --batch-size or device.
    decode = decode_config(args)
    generator = decode.generator()
    bar = tqdm(total=len(tokens), desc="detokenizing", unit="img", disable=len(tokens) <= args.batch_size or None)
    for start in range(0, len(tokens), args.batch_size):
        chunk = tokens[start : start + args.batch_size]
        chunk_sizes = sizes[start : start + args.batch_size]
        noise = model.initial_noise_list(len(chunk), generator, chunk_sizes)
        images = model.detokenize_list([t.to(device) for t in chunk], decode, noise=noise, image_size=chunk_sizes)
        for image, path in zip(images, outputs[start : start + len(chunk)], strict=True):
            save_image(image, path)
        bar.update(len(chunk))
    bar.close()
    where = outputs[0] if len(outputs) == 1 else Path(args.output)
    info(f"wrote {len(outputs)} image(s) to {where}")
    return 0
