"""The ``flexitok`` command line entry point."""

from __future__ import annotations

import argparse
import importlib
import sys

from flexitok.errors import FlexiTokError

# Sub-command modules under flexitok.cli; each exposes ``register(subparsers)``.
COMMANDS: list[str] = [
    "tokenize",
    "detokenize",
    "reconstruct",
    "convert",
    "bench",
    "eval",
    "codec",
    "demo",
    "generate",
    "pretokenize",
    "shards",
    "bench_generator",
    "eval_generation",
    "train_classifier",
    "train",
    "quickstart",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexitok", description="FlexTok image tokenization: tokenize, reconstruct, train, generate."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"flexitok.cli.{name}").register(sub)
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
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
