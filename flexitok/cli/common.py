"""Helpers shared by the inference sub-commands: common flags, device choice, model loading, input discovery.

Messages for the user go to stderr (stdout is kept for data, e.g. ``flexitok tokenize IMG`` prints JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flexitok.config import default_ks
from flexitok.data import DATA_KINDS
from flexitok.errors import InvalidInputError
from flexitok.io.images import SizeRule, fit_within, is_image_file
from flexitok.sampling.ar import ARSamplingConfig, GuidanceScheduleKind
from flexitok.sampling.decode import SAMPLERS, DecodeConfig

if TYPE_CHECKING:
    from flexitok.models.flextok import FlexTok

DEFAULT_MODEL = "default"
# Datasets with class labels (the scikit-image photos have none).
LABELLED_DATA_KINDS = tuple(k for k in DATA_KINDS if k != "skimage")


def info(message: str) -> None:
    """Print a one-line status message to stderr."""
    print(message, file=sys.stderr, flush=True)


class ConversionNotes:
    """Collects how input images were converted; one summary line at the end unless ``verbose`` (one per image).

    Converting is normal (photos are rarely at the model's size), so a line per image would drown the output of
    a folder-sized call.
    """

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self.converted = 0
        self.kinds: dict[str, int] = {}

    def add(self, path: str | Path, note: str) -> None:
        if not note:
            return
        self.converted += 1
        for part in note.split("; "):
            kind = part.split(" ")[0]  # "resized", "converted", "center-cropped", "applied", "used"
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if self.verbose:
            info(f"{path}: {note}")

    def summary(self, total: int) -> None:
        if self.verbose or not self.converted:
            return
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items()))
        info(f"converted {self.converted} of {total} images to the model's input ({kinds}); --verbose lists each")


def add_verbose_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="print how each input image was converted (default: a summary)"
    )


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


def add_decode_args(
    parser: argparse.ArgumentParser,
    defaults: DecodeConfig | None = DecodeConfig(),
    *,
    guidance_flag: str = "--guidance-scale",
    seed: bool = True,
    seed_help: str = "seed of the decoder's initial noise",
) -> None:
    """The decoder flags that :func:`decode_config` turns into a :class:`DecodeConfig`: ``--steps``,
    ``--guidance-scale`` (or ``guidance_flag``), ``--apg/--no-apg`` and ``--seed`` (unless ``seed=False``).

    ``defaults=None``: every flag defaults to "unset" and :func:`decode_config` takes the value from a base
    config (e.g. the settings stored in a .ftok file).
    """
    d = defaults

    def default(name: str) -> str:
        return "from the file" if d is None else str(getattr(d, name))

    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None if d is None else d.steps,
        help=f"Euler steps of the flow decoder (default {default('steps')})",
    )
    parser.add_argument(
        guidance_flag,
        dest="guidance_scale",
        type=float,
        default=None if d is None else d.guidance_scale,
        help=f"decoder guidance scale; 1 disables guidance (default {default('guidance_scale')})",
    )
    parser.add_argument(
        "--apg",
        action=argparse.BooleanOptionalAction,
        default=None if d is None else d.apg,
        help="adaptive projected guidance; --no-apg: plain classifier-free guidance (default "
        + ("from the file" if d is None else "APG" if d.apg else "CFG")
        + ")",
    )
    if seed:
        parser.add_argument(
            "--seed", type=int, default=None if d is None else d.seed, help=f"{seed_help} (default {default('seed')})"
        )
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=None if d is None else d.sampler,
        help=f"flow sampler: euler (official), heun or midpoint (second order) (default {default('sampler')})",
    )
    parser.add_argument(
        "--guidance-interval",
        type=guidance_interval,
        default=None,
        metavar="LO,HI",
        help="guide only at flow times LO <= t <= HI (t = 1 is noise), one conditional pass elsewhere "
        "(default: guidance at every step" + (", or the file's" if d is None else "") + ")",
    )


def guidance_interval(text: str) -> tuple[float, float]:
    """``"0.2,0.8"`` -> ``(0.2, 0.8)`` (argparse type of ``--guidance-interval``)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI such as 0.2,0.8; got {text!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise argparse.ArgumentTypeError(f"the interval must satisfy 0 <= LO <= HI <= 1; got {text!r}")
    return lo, hi


def decode_config(args: argparse.Namespace, base: DecodeConfig | None = None) -> DecodeConfig:
    """The :class:`DecodeConfig` selected by :func:`add_decode_args`; unset flags take ``base``'s values."""
    base = base or DecodeConfig()
    names = ("steps", "guidance_scale", "apg", "seed", "sampler", "guidance_interval")
    given = {name: getattr(args, name, None) for name in names}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def add_ar_sampling_args(parser: argparse.ArgumentParser, cfg_scale: bool = True) -> None:
    """The AR generator's sampling flags that :func:`ar_sampling_config` turns into an ``ARSamplingConfig``:
    ``--temperature``, ``--top-k``, ``--top-p``, ``--cfg-scale`` (unless ``cfg_scale=False``, for commands that sweep
    scales), ``--cfg-schedule`` and ``--no-cache``."""
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy (default 1)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    if cfg_scale:
        parser.add_argument(
            "--cfg-scale", type=float, default=3.0, help="generator classifier-free guidance (1 = off; default 3)"
        )
    parser.add_argument(
        "--cfg-schedule",
        default="constant",
        choices=list(typing.get_args(GuidanceScheduleKind)),
        help="guidance over token positions: constant, or a ramp from 1 to the CFG scale",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="recompute the whole sequence each step (slow; for checks)"
    )


def ar_sampling_config(args: argparse.Namespace, **overrides: Any) -> ARSamplingConfig:
    """The ``ARSamplingConfig`` selected by :func:`add_ar_sampling_args` (``overrides`` replace fields)."""
    fields: dict[str, Any] = {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "guidance_schedule": args.cfg_schedule,
        "use_cache": not args.no_cache,
    }
    if hasattr(args, "cfg_scale"):
        fields["guidance_scale"] = args.cfg_scale
    return ARSamplingConfig(**{**fields, **overrides})


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


def parse_token_counts(text: str, n_registers: int, flag: str = "--tokens") -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]``; ``"all"`` -> the default ladder 1, 2, 4, ..., N. Every value must lie in
    1..n_registers (the model's number of tokens)."""
    if text.strip().lower() == "all":
        return default_ks(n_registers)
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidInputError(
            f"{flag} must be comma-separated integers such as 1,4,16 (or 'all'); got {text!r}"
        ) from None
    if not ks:
        raise InvalidInputError(f"{flag} needs at least one token count")
    bad = [k for k in ks if not 1 <= k <= n_registers]
    if bad:
        raise InvalidInputError(f"{flag} values {bad} are outside 1..{n_registers} (this model's number of tokens)")
    return ks


def add_data_args(
    parser: argparse.ArgumentParser,
    default: str | None = "fashion_mnist",
    split: str | None = "test",
    kinds: Sequence[str] = DATA_KINDS,
) -> None:
    """``--data`` (one of ``kinds``; required when ``default`` is None), ``--data-path`` and, unless ``split`` is
    None, ``--split`` (default ``split``)."""
    parser.add_argument(
        "--data",
        default=default,
        required=default is None,
        choices=list(kinds),
        help="dataset" + (f" (default {default})" if default else ""),
    )
    parser.add_argument(
        "--data-path",
        default=None,
        help="dataset location (image folder, webdataset shards; Fashion-MNIST defaults to the system copy)",
    )
    if split is not None:
        parser.add_argument(
            "--split",
            default=split,
            help=f"dataset split: a split folder of --data-path (train, val, test, ...) (default {split})",
        )
