"""The ``flexitok`` command line entry point."""

from __future__ import annotations

import argparse
import importlib
import sys

from flexitok.errors import FlexiTokError

# Commands: modules under flexitok.cli, each exposing ``register(subparsers)``.
COMMANDS: list[str] = [
    "tokenize",
    "detokenize",
    "reconstruct",
    "codec",
    "generate",
    "train",
    "eval",
    "bench",
    "pretokenize",
    "shards",
    "convert",
    "demo",
    "quickstart",
]

# Verbs with targets, ``flexitok <verb> <target>``: verb -> (help, {target: module}). Each target module's
# ``register(targets)`` adds the parser named after its target. (``train`` keeps its targets in flexitok.cli.train.)
VERBS: dict[str, tuple[str, dict[str, str]]] = {
    "eval": (
        "measure quality: reconstruction vs tokens (tokenizer), generated images (generator), or write reference "
        "statistics (reference)",
        {"tokenizer": "eval_tokenizer", "generator": "eval_generator", "reference": "eval_reference"},
    ),
    "bench": (
        "measure speed and memory: tokenize/detokenize (tokenizer) or AR sampling (generator)",
        {"tokenizer": "bench", "generator": "bench_generator"},
    ),
}


def _register_verb(sub: argparse._SubParsersAction, verb: str) -> None:
    help_, targets = VERBS[verb]
    p = sub.add_parser(verb, help=help_, description=help_[0].upper() + help_[1:] + ".")
    target_parsers = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    for module in targets.values():
        importlib.import_module(f"flexitok.cli.{module}").register(target_parsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexitok",
        description="FlexTok image tokenization: tokenize, reconstruct, train, generate. "
        "Commands with targets: flexitok train|eval|bench tokenizer|generator|...",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if name in VERBS:
            _register_verb(sub, name)
        else:
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
        return getattr(e, "exit_code", 2)  # 2, or the error's own code (75: a training run stopped by SIGTERM)
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
