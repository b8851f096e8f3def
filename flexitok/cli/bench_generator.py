"""``flexitok bench generator``: AR sampling throughput with and without the KV cache (logic in
:mod:`flexitok.bench.generator`).

Prints tokens/s and images/s (token generation only, and with decoding when a tokenizer is given), the KV-cache
speed-up, and checks that the cached and uncached paths produce the same samples for the same seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flexitok.bench.generator import GeneratorBenchConfig, run_generator_benchmark
from flexitok.cli.common import add_decode_args, decode_config, info, positive_int
from flexitok.models.generator import GENERATOR_PRESETS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generator",
        help="benchmark AR generation speed with and without the KV cache",
        description="Time AR token sampling with and without the KV cache (tokens/s, images/s, their ratio) and "
        "check both paths give the same samples for the same seed. Presets use random weights.",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--preset", choices=GENERATOR_PRESETS, default=None, help="random-weight size preset (default tiny)"
    )
    which.add_argument("--generator", default=None, help="a saved or bundled generator instead")
    p.add_argument("--tokenizer", default=None, help="also time decoding with this tokenizer (images/s end to end)")
    p.add_argument("--tokens", type=positive_int, default=None, help="tokens per image (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--cfg-scale", type=float, default=3.0, help="guidance (doubles the batch unless 1; default 3)")
    p.add_argument("--temperature", type=float, default=1.0)
    add_decode_args(p, seed=False)  # the decoder settings of the pipeline timing
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 runs under autocast")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--skip-uncached", action="store_true", help="only time the cached path (long sequences)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the result as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from flexitok.utils.files import atomic_write_json

    cfg = GeneratorBenchConfig(
        preset=args.preset or "tiny",
        generator=args.generator,
        tokenizer=args.tokenizer,
        tokens=args.tokens,
        batch_size=args.batch_size,
        cfg_scale=args.cfg_scale,
        temperature=args.temperature,
        decode=decode_config(args),
        device=args.device,
        dtype=args.dtype,
        warmup=args.warmup,
        repeats=args.repeats,
        skip_uncached=args.skip_uncached,
        seed=args.seed,
        threads=args.threads,
    )
    info("timing AR sampling with and without the KV cache ...")
    result = run_generator_benchmark(cfg)
    print(result.format_table())
    if args.json:
        atomic_write_json(Path(args.json), result.to_dict())
    return 0
