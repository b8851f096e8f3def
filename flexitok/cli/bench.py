"""``flexitok bench tokenizer``: tokenize/detokenize throughput and peak memory (logic in :mod:`flexitok.bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexitok.bench import BenchConfig, run_benchmark
from flexitok.cli.common import add_decode_args, decode_config, info, positive_int
from flexitok.config import PRESETS
from flexitok.io.checkpoint import atomic_write_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenizer",
        help="benchmark tokenize/detokenize speed and memory",
        description="Time tokenize and detokenize on a random batch and print images/s, seconds per image and "
        "peak memory. Presets use random weights.",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--preset", choices=sorted(PRESETS), default=None, help="model size preset (default tiny)")
    which.add_argument("--model", metavar="NAME_OR_PATH", default=None, help="a saved or bundled model instead")
    p.add_argument("--batch-size", type=positive_int, default=4, help="images per batch (default 4)")
    p.add_argument("--resolution", type=positive_int, default=None, help="square image side for presets")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 runs under autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder and decoder")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per phase (default 1)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed iterations per phase; median (default 3)")
    add_decode_args(p, seed=False)
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, images and noise (default 0)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = BenchConfig(
        model=args.model or args.preset or "tiny",
        batch_size=args.batch_size,
        resolution=args.resolution,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        warmup=args.warmup,
        repeats=args.repeats,
        decode=decode_config(args),
        seed=args.seed,
    )
    report = run_benchmark(cfg, progress=info)
    print(report.format_table())
    if args.json:
        atomic_write_json(Path(args.json), report.to_dict())
        info(f"wrote {args.json}")
    return 0
