"""``flexitok convert-official``: an official FlexTok ``model.safetensors`` -> a flexitok model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexitok.cli.common import info
from flexitok.errors import InvalidInputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-official",
        help="convert an official FlexTok checkpoint",
        description="Convert an official-format FlexTok checkpoint (model.safetensors with the config in its "
        "header; the VAE architecture is read from the folder its hf_hub_path names, e.g. ./vae beside it) into "
        "a flexitok model folder (config.json + model.safetensors) loadable with --model OUT.",
    )
    p.add_argument("input", metavar="IN", help="official model.safetensors, or the folder holding it")
    p.add_argument("output", metavar="OUT", help="output folder")
    p.add_argument(
        "--vae-config",
        metavar="PATH",
        default=None,
        help="diffusers AutoencoderKL config (folder or config.json) when the checkpoint's VAE path is not beside it",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing model in OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flexitok.models.flextok import FlexTok

    src = Path(args.input)
    if src.is_dir():
        src = src / "model.safetensors"
    if not src.is_file():
        raise InvalidInputError(f"{src}: no such checkpoint file")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} exists and is not a folder")
    if (out / "model.safetensors").exists() and not args.force:
        raise InvalidInputError(f"{out} already holds a model; pass --force to overwrite it")
    model = FlexTok.from_official(src, vae_config=args.vae_config)
    model.save_pretrained(out)
    c = model.config
    params = sum(p.numel() for p in model.parameters())
    info(
        f"converted {src} -> {out}: {params / 1e6:.2f}M parameters, {c.image_size[0]}x{c.image_size[1]} images, "
        f"{c.n_registers} tokens, vocabulary {c.vocab_size}"
    )
    return 0
