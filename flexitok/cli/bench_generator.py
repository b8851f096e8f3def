"""``flexitok bench generator``: AR sampling throughput with and without the KV cache.

Prints tokens/s and images/s (token generation only, and with decoding when a tokenizer is given) and checks
that the cached and uncached paths produce the same samples for the same seed. Presets use random weights.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from flexitok.bench import synchronize
from flexitok.cli.common import add_decode_args, decode_config, info, load_model, positive_int
from flexitok.errors import InvalidInputError
from flexitok.models.generator import GENERATOR_PRESETS, Generator, generator_preset
from flexitok.sampling.ar import ARSamplingConfig, generate
from flexitok.utils.device import resolve_device


@dataclass
class GeneratorBenchResult:
    device: str
    model: str
    params_m: float
    batch_size: int
    tokens: int
    cfg_scale: float
    cached_s: float
    uncached_s: float | None
    cached_tokens_per_s: float
    uncached_tokens_per_s: float | None
    cached_images_per_s: float
    uncached_images_per_s: float | None
    pipeline_images_per_s: float | None  # AR (cached) + tokenizer decoding
    cached_equals_uncached: bool | None

    def format_table(self) -> str:
        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.4g}"

        return "\n".join(
            [
                f"generator {self.model} ({self.params_m:.1f}M params) on {self.device}: batch {self.batch_size}, "
                f"{self.tokens} tokens, cfg {self.cfg_scale}",
                f"{'path':<12}{'seconds':>10}{'tokens/s':>12}{'images/s':>12}",
                f"{'kv-cache':<12}{f(self.cached_s):>10}{f(self.cached_tokens_per_s):>12}{f(self.cached_images_per_s):>12}",
                f"{'no cache':<12}{f(self.uncached_s):>10}{f(self.uncached_tokens_per_s):>12}"
                f"{f(self.uncached_images_per_s):>12}",
                f"pipeline images/s (AR + decode): {f(self.pipeline_images_per_s)}",
                f"cached == uncached samples: {self.cached_equals_uncached}",
            ]
        )


def _timed(fn, device: torch.device, repeats: int, warmup: int) -> tuple[float, torch.Tensor]:
    out = None
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    assert out is not None
    return statistics.median(times), out


def run_generator_benchmark(args: argparse.Namespace) -> GeneratorBenchResult:
    """Benchmark per the parsed CLI arguments (see :func:`register`)."""
    device = resolve_device(args.device)
    if args.generator is not None:
        gen = Generator.from_pretrained(args.generator, device=device)
        name = args.generator
    else:
        gen = Generator(generator_preset(args.preset or "tiny", num_classes=10)).to(device).eval()
        name = f"preset {args.preset or 'tiny'}"
    k = args.tokens or gen.config.n_tokens
    if not 1 <= k <= gen.config.n_tokens:
        raise InvalidInputError(f"--tokens must be in 1..{gen.config.n_tokens}, got {k}")
    b = args.batch_size
    dev = gen.tok_emb.weight.device
    condition = gen.conditioning.placeholder(b)  # stand-in labels / prompt features

    def run(use_cache: bool) -> torch.Tensor:
        cfg = ARSamplingConfig(
            n_tokens=k, temperature=args.temperature, guidance_scale=args.cfg_scale, use_cache=use_cache
        )
        return generate(gen, cfg, condition, generator=torch.Generator(device=dev).manual_seed(args.seed))

    dtype = {"fp32": None, "bf16": torch.bfloat16}[args.dtype]
    ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type, enabled=False)
    with ctx:
        info("timing the cached path ...")
        t_c, cached = _timed(lambda: run(True), device, args.repeats, args.warmup)
        t_u, uncached = None, None
        if not args.skip_uncached:
            info("timing the uncached path ...")
            t_u, uncached = _timed(lambda: run(False), device, args.repeats, args.warmup)
    pipeline = None
    if args.tokenizer is not None:
        tok = load_model(args.tokenizer, device)
        if tok.vocab_size != gen.vocab_size:
            raise InvalidInputError(f"tokenizer vocab {tok.vocab_size} != generator vocab {gen.vocab_size}")
        info("timing AR + decoding ...")
        decode = decode_config(args)
        t_p, _ = _timed(lambda: tok.detokenize(run(True), decode), device, args.repeats, args.warmup)
        pipeline = b / t_p
    return GeneratorBenchResult(
        device=str(device),
        model=name,
        params_m=sum(p.numel() for p in gen.parameters()) / 1e6,
        batch_size=b,
        tokens=k,
        cfg_scale=args.cfg_scale,
        cached_s=t_c,
        uncached_s=t_u,
        cached_tokens_per_s=b * k / t_c,
        uncached_tokens_per_s=None if t_u is None else b * k / t_u,
        cached_images_per_s=b / t_c,
        uncached_images_per_s=None if t_u is None else b / t_u,
        pipeline_images_per_s=pipeline,
        cached_equals_uncached=None if uncached is None else bool(torch.equal(cached, uncached)),
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generator",
        help="benchmark AR generation speed with and without the KV cache",
        description="Time AR token sampling with and without the KV cache (tokens/s, images/s) and check both "
        "paths give the same samples for the same seed. Presets use random weights.",
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
    p.add_argument("--json", metavar="FILE", default=None, help="also write the result as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from flexitok.io.checkpoint import atomic_write_json

    result = run_generator_benchmark(args)
    print(result.format_table())
    if args.json:
        atomic_write_json(Path(args.json), asdict(result))
    return 0
