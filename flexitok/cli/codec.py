"""``flexitok encode`` / ``decode`` / ``truncate``: images <-> compact ``.ftok`` token files.

``encode`` keeps either a fixed number of tokens (``-k``) or, with ``--target METRIC=VALUE``, the smallest k whose
reconstruction meets the target (see :mod:`flexitok.codec.adaptive`); ``--report`` writes a Markdown batch report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flexitok.cli.common import (
    ConversionNotes,
    add_decode_args,
    add_model_args,
    add_verbose_arg,
    collect_image_paths,
    decode_config,
    info,
    load_model,
    model_reference,
    positive_int,
)
from flexitok.codec.adaptive import QualityTarget, build_scorer, decode_tokens, search_k
from flexitok.codec.ftok import SUFFIX, FtokError, FtokFile, read_ftok, write_ftok
from flexitok.codec.report import ReportRow, gradient_magnitude, png_bits_per_pixel, render_report, write_report
from flexitok.errors import FlexiTokError, InvalidInputError
from flexitok.io.images import is_image_file, load_image, save_image
from flexitok.utils.device import resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    _register_encode(sub)
    _register_decode(sub)
    _register_truncate(sub)


# ---------------------------------------------------------------------------- encode
def _register_encode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode",
        help="compress images to compact .ftok token files",
        description="Tokenize images and store the first k tokens of each in a .ftok file (bit-packed, with a "
        "model fingerprint and a CRC32; format: docs/ftok-format.md). Prints the bytes per image.",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or folders of images")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("-k", "--tokens", type=positive_int, default=None, help="tokens to keep (default: all N)")
    budget.add_argument(
        "--target",
        metavar="METRIC=VALUE",
        default=None,
        help="keep the fewest tokens whose reconstruction meets a quality target: psnr=24 (dB), ssim=0.8, or "
        "lpips-like=0.05 (EfficientNet-Lite0 feature cosine distance, lower is better)",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="PATH",
        help="output .ftok file for one image; output folder for several (default for one image: beside it)",
    )
    p.add_argument("--report", default=None, metavar="REPORT.md", help="write a Markdown report of k vs complexity")
    add_model_args(p)
    add_verbose_arg(p)
    add_decode_args(p)
    p.set_defaults(func=run_encode)


def _output_paths(args: argparse.Namespace, paths: list[Path], single: bool) -> list[Path | None]:
    if single:
        out = Path(args.output) if args.output else paths[0].with_suffix(SUFFIX)
        if out.suffix != SUFFIX:
            raise InvalidInputError(f"--output must end in {SUFFIX} for a single image, got {str(out)!r}")
        return [out]
    if args.output is None:
        if args.report is None:
            raise InvalidInputError("several images: pass -o FOLDER for the .ftok files (or only --report REPORT.md)")
        return [None] * len(paths)
    folder = Path(args.output)
    if folder.suffix == SUFFIX or folder.is_file():
        raise InvalidInputError(f"several images need -o to be a folder, got {str(folder)!r}")
    stems = [p.stem for p in paths]
    # Same stem in different sub-folders (or a.png + a.jpg) would overwrite each other: keep the suffix then.
    names = [p.stem if stems.count(p.stem) == 1 else p.name for p in paths]
    if len(set(names)) != len(names):
        raise InvalidInputError("several input images share a file name; encode them into separate folders")
    return [folder / f"{n}{SUFFIX}" for n in names]


def run_encode(args: argparse.Namespace) -> int:
    paths = collect_image_paths(args.inputs)
    single = len(args.inputs) == 1 and not Path(args.inputs[0]).is_dir()
    outputs = _output_paths(args, paths, single)
    if args.report and not args.target:
        raise InvalidInputError("--report compares the k needed for a quality target: pass --target too")
    if args.report and Path(args.report).suffix.lower() != ".md":
        raise InvalidInputError(f"--report must be a Markdown file name ending in .md, got {args.report!r}")
    target = QualityTarget.parse(args.target) if args.target else None
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    n = model.n_registers
    if args.tokens is not None and args.tokens > n:
        raise InvalidInputError(f"-k {args.tokens} is more than this model's {n} tokens")
    decode = decode_config(args)
    if not 0 <= decode.seed <= 0xFFFFFFFF:
        raise InvalidInputError(f"--seed must lie in 0..{0xFFFFFFFF}, got {decode.seed}")
    scorer = build_scorer(target.metric, device) if target else None
    hint = model_reference(args.model)

    rows: list[ReportRow] = []
    total = 0
    notes = ConversionNotes(args.verbose)
    for path, out in tqdm(list(zip(paths, outputs, strict=True)), desc="encoding", unit="img", disable=single or None):
        loaded = load_image(path, model.image_size)
        notes.add(path, loaded.note)
        image = loaded.tensor.to(device)
        tokens = model.tokenize(image[None])[0]
        if target is not None:
            result = search_k(model, image, target, scorer, decode, tokens)
            k = result.k
        else:
            result, k = None, args.tokens or n
        ftok = FtokFile.from_model(model, tokens[:k].cpu(), hint, decode)
        data = ftok.to_bytes()
        total += len(data)
        if out is not None:
            write_ftok(out, ftok)
        where = f" -> {out}" if out is not None else ""
        quality = ""
        if result is not None and target is not None:
            quality = f", {target.metric}={result.score:.4g}" + ("" if result.met else f" (target {target} not met)")
        h, w = model.image_size
        payload = (k * ftok.bits_per_token + 7) // 8
        print(
            f"{path}{where}: k={k} tokens, {len(data)} bytes ({payload} token bytes + {len(data) - payload} header "
            f"and checksum; {8 * len(data) / (h * w):.4f} bits/pixel){quality}"
        )
        if args.report and result is not None:
            rows.append(
                ReportRow(
                    name=str(path),
                    result=result,
                    gradient=gradient_magnitude(loaded.tensor),
                    png_bpp=png_bits_per_pixel(loaded.tensor),
                    ftok_bytes=len(data),
                )
            )
    notes.summary(len(paths))
    if len(paths) > 1:
        print(f"{len(paths)} images, {total} bytes in total ({total / len(paths):.1f} bytes per image)")
    if args.report and target is not None:
        write_report(args.report, render_report(rows, target, n, hint))
        info(f"wrote report {args.report}")
    return 0


# ---------------------------------------------------------------------------- decode
def _register_decode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "decode",
        help="reconstruct an image from a .ftok file",
        description="Decode a .ftok file with the model that made it (found from the file's model hint, or "
        "--model). Refuses a model whose fingerprint differs from the file's. Decoder settings default to the ones "
        "stored in the file, which reproduce the encoder's reconstruction exactly.",
    )
    p.add_argument("input", metavar="FILE.ftok")
    p.add_argument("-o", "--output", required=True, metavar="IMAGE.png", help="output image")
    add_model_args(p, model_default=None)
    add_decode_args(p, defaults=None)
    p.set_defaults(func=run_decode)


def _load_model_for(ftok: FtokFile, source: Path, requested: str | None, device: torch.device):
    if requested:
        model = load_model(requested, device)
        ftok.check_model(model, requested)
        return model
    if not ftok.model_hint:
        raise FtokError(f"{source} names no model; pass --model with the model used for encoding")
    hint = ftok.model_hint
    # A relative path hint is tried from the working directory first, then from the file's folder.
    beside = source.parent / hint
    candidate = str(beside) if not Path(hint).is_absolute() and not Path(hint).exists() and beside.exists() else hint
    try:
        model = load_model(candidate, device)
    except FlexiTokError as e:
        raise FtokError(f"cannot load the model named in {source} ({hint!r}): {e}; pass --model") from None
    ftok.check_model(model, hint)
    return model


def run_decode(args: argparse.Namespace) -> int:
    source, output = Path(args.input), Path(args.output)
    if not is_image_file(output):
        raise InvalidInputError(f"--output must be an image file name such as out.png, got {args.output!r}")
    ftok = read_ftok(source)
    device = resolve_device(args.device)
    model = _load_model_for(ftok, source, args.model, device)
    image = decode_tokens(model, ftok.token_tensor(), decode_config(args, base=ftok.decode))[0]
    save_image(image, output)
    print(f"{source}: k={ftok.k} tokens, {source.stat().st_size} bytes -> {output}")
    return 0


# ---------------------------------------------------------------------------- truncate
def _register_truncate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "truncate",
        help="keep only the first k tokens of a .ftok file (a coarser image)",
        description="Tokens are ordered coarse to fine, so the first k tokens of a file are a valid, coarser file.",
    )
    p.add_argument("input", metavar="FILE.ftok")
    p.add_argument("-k", "--tokens", type=positive_int, required=True, help="tokens to keep")
    p.add_argument("-o", "--output", default=None, metavar="OUT.ftok", help="output file (default: in place)")
    p.set_defaults(func=run_truncate)


def run_truncate(args: argparse.Namespace) -> int:
    source = Path(args.input)
    output = Path(args.output) if args.output else source
    if output.suffix != SUFFIX:
        raise InvalidInputError(f"--output must end in {SUFFIX}, got {str(output)!r}")
    ftok = read_ftok(source)
    before = source.stat().st_size
    size = write_ftok(output, ftok.truncate(args.tokens))
    print(f"{source}: {ftok.k} -> {args.tokens} tokens, {before} -> {size} bytes -> {output}")
    return 0
