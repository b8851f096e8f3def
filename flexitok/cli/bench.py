"""``flexitok bench tokenizer``: tokenize/detokenize throughput, peak memory and fraction of matmul peak;
``--compare REV`` times another git revision side by side (logic in :mod:`flexitok.bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexitok.bench import PHASES, BenchConfig, CompareConfig, run_benchmark, run_comparison
from flexitok.cli.common import add_decode_args, decode_config, info, positive_int
from flexitok.config import PRESETS
from flexitok.errors import InvalidInputError
from flexitok.utils.files import atomic_write_json


def _phases(text: str) -> tuple[str, ...]:
    phases = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in phases if p not in PHASES]
    if bad or not phases:
        raise argparse.ArgumentTypeError(f"phases must be a comma-separated subset of {','.join(PHASES)}")
    return phases


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenizer",
        help="benchmark tokenize/detokenize speed and memory (or compare two revisions)",
        description="Time tokenize, detokenize and one decoder pass on a random batch and print images/s, seconds "
        "per image, peak memory and the fraction of the matmul peak (measured in the same run). Presets use random "
        "weights. --compare REV times git revision REV against this package (or --base) in one run, interleaved.",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--preset", choices=sorted(PRESETS), default=None, help="model size preset (default tiny)")
    which.add_argument("--model", metavar="NAME_OR_PATH", default=None, help="a saved or bundled model instead")
    p.add_argument("--batch-size", type=positive_int, default=4, help="images per batch (default 4)")
    p.add_argument("--resolution", type=positive_int, default=None, help="square image side for presets")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 runs under autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder and decoder")
    p.add_argument(
        "--row-parallel",
        action="store_true",
        help="CPU: split each decoder pass's rows over --threads workers of one thread (FlexTok.enable_row_parallel)",
    )
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--phases", type=_phases, default=PHASES, help=f"comma-separated subset of {','.join(PHASES)} (default all)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per phase (default 1)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed calls (rounds with --compare; default 3)")
    add_decode_args(p, seed=False)
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, images and noise (default 0)")
    p.add_argument("--compare", metavar="REV", default=None, help="also time this git revision, interleaved")
    p.add_argument("--base", metavar="REV", default=None, help="with --compare: the other side (default: this package)")
    p.add_argument("--repo", default=None, help="with --compare: the git checkout (default: this package's)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.base is not None and args.compare is None:
        raise InvalidInputError("--base needs --compare REV")
    cfg = BenchConfig(
        model=args.model or args.preset or "tiny",
        batch_size=args.batch_size,
        resolution=args.resolution,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        row_parallel=args.row_parallel,
        warmup=args.warmup,
        repeats=args.repeats,
        decode=decode_config(args),
        seed=args.seed,
        threads=args.threads,
        phases=args.phases,
    )
    if args.compare is not None:
        report = run_comparison(CompareConfig(rev=args.compare, bench=cfg, base=args.base, repo=args.repo), info)
    else:
        report = run_benchmark(cfg, progress=info)  # type: ignore[assignment]
    print(report.format_table())
    if args.json:
        atomic_write_json(Path(args.json), report.to_dict())
        info(f"wrote {args.json}")
    return 0
