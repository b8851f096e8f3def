"""``flexitok train <target>``: train a tokenizer, a VAE (or any registered target) from a YAML config.

flexitok train tokenizer --config configs/tokenizer-tiny-fmnist.yaml train.steps=2000 data.limit=10000
flexitok train tokenizer --config configs/tokenizer-tiny-fmnist.yaml --resume
torchrun --nproc_per_node=8 -m flexitok train tokenizer --config configs/tokenizer-d12-d12.yaml
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

from flexitok.errors import InvalidInputError

# target name -> runner ``(flexitok.train.run.TargetArgs) -> int`` or a lazy "module:function" reference.
# Another module can add a target by inserting into this dict (the generator target resolves lazily).
TRAIN_TARGETS: dict[str, Callable | str] = {
    "tokenizer": "flexitok.train.run:run_tokenizer",
    "vae": "flexitok.train.run:run_vae",
    "generator": "flexitok.train.generator:main",
}

_HELP = {
    "tokenizer": "train a FlexTok tokenizer (rectified-flow decoder, nested dropout, FSQ)",
    "vae": "train or fine-tune a diffusers AutoencoderKL (stage 0)",
    "generator": "train an autoregressive generator on token shards",
}


def resolve_target(name: str) -> Callable:
    target = TRAIN_TARGETS.get(name)
    if target is None:
        raise InvalidInputError(f"unknown training target {name!r}; choose one of {sorted(TRAIN_TARGETS)}")
    if callable(target):
        return target
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            raise InvalidInputError(f"training target {name!r} is not available in this install ({e})") from None
        raise
    fn = getattr(module, attr, None)
    if fn is None:
        raise InvalidInputError(f"training target {name!r}: {module_name} has no {attr}()")
    return fn


def _run(args: argparse.Namespace) -> int:
    from flexitok.train.run import TargetArgs

    if args.dry_run:
        if args.target != "tokenizer":
            raise InvalidInputError(f"--dry-run sizes tokenizer runs only, not {args.target!r}")
        from flexitok.train.estimate import dry_run

        print(dry_run(args.config, list(args.overrides), args.world_size))
        return 0
    fn = resolve_target(args.target)
    targs = TargetArgs(
        config=args.config,
        overrides=list(args.overrides),
        resume=args.resume,
        no_fallback=args.no_fallback,
        allow_config_change=args.allow_config_change,
    )
    return int(fn(targs) or 0)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a tokenizer, VAE or generator from a YAML config, or the evaluation classifier",
        description="Train from a YAML config with dotted overrides (section.key=value). Multi-GPU: "
        "torchrun --nproc_per_node=8 -m flexitok train tokenizer --config configs/tokenizer-d12-d12.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name in TRAIN_TARGETS:
        t = sub.add_parser(name, help=_HELP.get(name, f"train {name}"))
        t.add_argument("--config", "-c", default=None, help="YAML run config (see configs/)")
        t.add_argument("--resume", action="store_true", help="continue from <train.out_dir>/last (exact resume)")
        t.add_argument(
            "--no-fallback",
            action="store_true",
            help="with --resume: refuse a corrupt last checkpoint instead of falling back to the newest intact one",
        )
        t.add_argument(
            "--allow-config-change",
            action="store_true",
            help="with --resume: continue although hyperparameters differ from the checkpoint's (they are listed)",
        )
        t.add_argument(
            "--dry-run",
            action="store_true",
            help="tokenizer: print parameters, FLOPs and per-GPU memory from a meta-device trace; train nothing",
        )
        t.add_argument("--world-size", type=int, default=8, help="GPUs assumed by --dry-run (default 8)")
        t.add_argument(
            "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=3e-4 data.image_size=32"
        )
        t.set_defaults(func=_run)
    # The classifier is trained from flags, not a run config.
    from flexitok.cli import train_classifier

    train_classifier.register(sub)
