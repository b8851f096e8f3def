"""``flexitok train <target>``: train a tokenizer, a VAE or a generator from a YAML config, or the classifier.

Each target is the ``TARGET`` (:class:`flexitok.train.run.TrainTarget`) of its module in ``flexitok.train``,
imported here by name; :func:`flexitok.train.run.run_target` runs any of them.

flexitok train tokenizer --config configs/tokenizer-tiny-fmnist.yaml train.steps=2000 data.limit=10000
flexitok train tokenizer --config configs/tokenizer-tiny-fmnist.yaml --resume
torchrun --nproc_per_node=8 -m flexitok train tokenizer --config configs/tokenizer-d12-d12.yaml
"""

from __future__ import annotations

import argparse

from flexitok.cli import train_classifier
from flexitok.errors import InvalidInputError
from flexitok.train import classifier, generator, tokenizer, vae
from flexitok.train.run import TargetArgs, TrainTarget, run_target

# The targets of `flexitok train` (the classifier's command line is its own: flags, not a YAML config).
TARGETS: dict[str, TrainTarget] = {t.name: t for t in (tokenizer.TARGET, vae.TARGET, generator.TARGET)}


def _run(args: argparse.Namespace) -> int:
    if args.dry_run:
        if args.target != "tokenizer":
            raise InvalidInputError(f"--dry-run sizes tokenizer runs only, not {args.target!r}")
        from flexitok.train.estimate import dry_run

        print(dry_run(args.config, list(args.overrides), args.world_size))
        return 0
    targs = TargetArgs(
        config=args.config,
        overrides=list(args.overrides),
        resume=args.resume,
        no_fallback=args.no_fallback,
        allow_config_change=args.allow_config_change,
    )
    return run_target(TARGETS[args.target], targs)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a tokenizer, VAE or generator from a YAML config, or the evaluation classifier",
        description="Train from a YAML config with dotted overrides (section.key=value). Multi-GPU: "
        "torchrun --nproc_per_node=8 -m flexitok train tokenizer --config configs/tokenizer-d12-d12.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, target in TARGETS.items():
        t = sub.add_parser(name, help=target.help)
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
    train_classifier.register(sub, classifier.TARGET)
