"""Helpers shared by the inference sub-commands: common flags, device choice, model loading, input discovery.

Messages for the user go to stderr (stdout is kept for data, e.g. ``flexitok tokenize IMG`` prints JSON).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flexitok.errors import InvalidInputError
from flexitok.io.images import SizeRule, fit_within, is_image_file

if TYPE_CHECKING:
    from flexitok.models.flextok import FlexTok

DEFAULT_MODEL = "default"


def info(message: str) -> None:
    """Print a one-line status message to stderr."""
    print(message, file=sys.stderr, flush=True)


def add_model_args(parser: argparse.ArgumentParser, model_default: str | None = DEFAULT_MODEL) -> None:
    """``--model`` and ``--device``."""
    help_default = f"default: {model_default!r}, the bundled model" if model_default else "default: see below"
    parser.add_argument(
        "--model",
        default=model_default,
        metavar="NAME_OR_PATH",
        help=f"bundled model name, folder written by save_pretrained, or official model.safetensors ({help_default})",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "mps"],
        help="where to run (auto: cuda, then mps, then cpu)",
    )


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """Decoder sampling flags: ``--steps``, ``--guidance-scale``, ``--no-apg``, ``--seed``."""
    parser.add_argument("--steps", type=positive_int, default=20, help="Euler steps of the flow decoder (default 20)")
    parser.add_argument(
        "--guidance-scale", type=float, default=7.5, help="classifier-free guidance scale; 1 disables it (default 7.5)"
    )
    parser.add_argument(
        "--no-apg", action="store_true", help="plain classifier-free guidance instead of adaptive projected guidance"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the decoder's initial noise (default 0)")


def add_batch_size_arg(parser: argparse.ArgumentParser, default: int = 8) -> None:
    parser.add_argument(
        "--batch-size", type=positive_int, default=default, help=f"images per forward pass (default {default})"
    )


def image_size_arg(text: str) -> tuple[int, int]:
    """argparse type: ``HxW`` (or ``N`` for NxN) in pixels."""
    parts = text.lower().split("x")
    try:
        hw = [int(p) for p in parts]
    except ValueError:
        hw = []
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) < 1:
        raise argparse.ArgumentTypeError(f"expected a size HxW such as 192x256, got {text!r}")
    return hw[0], hw[1]


def add_image_size_args(parser: argparse.ArgumentParser) -> None:
    """``--size HxW`` / ``--keep-aspect``: how input images are sized (default: the model's native size)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--size",
        type=image_size_arg,
        metavar="HxW",
        help="crop and resize every image to HxW (multiples of the model's patch size x VAE downsampling)",
    )
    group.add_argument(
        "--keep-aspect",
        action="store_true",
        help="keep each image's aspect ratio: the largest size inside the model's native size with valid sides",
    )


def image_size_rule(args: argparse.Namespace, model: FlexTok) -> SizeRule:
    """The size (or per-image size rule) selected by :func:`add_image_size_args`."""
    if getattr(args, "size", None) is not None:
        model.check_image_size(args.size)
        return args.size
    if getattr(args, "keep_aspect", False):
        # Sides that both the encoder and the decoder take, so the tokens decode at the same size.
        enc, dec = model.size_multiple("encoder"), model.size_multiple("decoder")
        native, multiple = model.image_size, (math.lcm(enc[0], dec[0]), math.lcm(enc[1], dec[1]))
        return lambda hw: fit_within(hw, native, multiple)
    return model.image_size


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``mps`` -> a device that exists here (a clear error otherwise)."""
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("--device cuda was requested but no CUDA GPU is available; use --device cpu or auto")
    if name == "mps" and not mps_ok:
        raise InvalidInputError("--device mps was requested but Apple MPS is not available; use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise InvalidInputError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    return torch.device(name)


def load_model(name_or_path: str, device: torch.device) -> FlexTok:
    """Load a FlexTok model in eval mode on ``device`` (errors for missing/corrupt checkpoints come from the loader)."""
    from flexitok.models.flextok import FlexTok

    model = FlexTok.from_pretrained(name_or_path, device=device)
    model.eval()
    return model


def model_reference(name_or_path: str) -> str:
    """What to record as the model in output files: an absolute path for local paths, else the name as given."""
    path = Path(name_or_path)
    return str(path.resolve()) if path.exists() else name_or_path


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``FlexTok.detokenize`` keyword arguments selected by :func:`add_sampling_args`."""
    return {"steps": args.steps, "guidance_scale": args.guidance_scale, "apg": not args.no_apg}


def collect_image_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand inputs to image files: files are kept as given (their content is checked when loaded), folders
    contribute their image files (by suffix, recursively, sorted). Missing inputs raise InvalidInputError."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f))
            if not found:
                raise InvalidInputError(f"{p}: folder contains no image files")
            paths.extend(found)
        elif p.exists():
            paths.append(p)
        else:
            raise InvalidInputError(f"{p}: no such file or folder")
    if not paths:
        raise InvalidInputError("no input images given")
    return paths


def parse_k_list(text: str, n_registers: int) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]``; every value must lie in 1..n_registers."""
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidInputError(
            f"--tokens must be comma-separated integers such as 1,4,16,64,256; got {text!r}"
        ) from None
    if not ks:
        raise InvalidInputError("--tokens needs at least one token count")
    bad = [k for k in ks if not 1 <= k <= n_registers]
    if bad:
        raise InvalidInputError(f"--tokens values {bad} are outside 1..{n_registers} (this model's number of tokens)")
    return ks


def default_k_list(n_registers: int) -> list[int]:
    """Powers of 4 up to N, plus N itself: 1,4,16,64,256 for 256 tokens."""
    ks, k = [], 1
    while k < n_registers:
        ks.append(k)
        k *= 4
    return ks + [n_registers]
