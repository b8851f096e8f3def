"""AR generator benchmark: tokens/s and images/s with and without the KV cache, and their ratio.

::

    from flexitok.bench.generator import GeneratorBenchConfig, run_generator_benchmark
    print(run_generator_benchmark(GeneratorBenchConfig(preset="tiny", batch_size=4)).format_table())

Both paths are timed interleaved (cached, uncached, cached, ...) and checked to produce the same samples for the
same seed. With a tokenizer, AR sampling (cached) plus decoding is timed too. Presets use random weights.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from flexitok.bench.session import resolve_device, synchronize
from flexitok.errors import InvalidInputError
from flexitok.sampling.decode import DecodeConfig


@dataclass
class GeneratorBenchConfig:
    """``generator``: a saved/bundled generator (None: the random-weight ``preset``); ``tokens``: tokens per image
    (None: all); ``tokenizer``: also time AR + decoding with this tokenizer and ``decode``."""

    preset: str = "tiny"
    generator: str | None = None
    tokenizer: str | None = None
    tokens: int | None = None
    batch_size: int = 8
    cfg_scale: float = 3.0
    temperature: float = 1.0
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    device: str = "auto"
    dtype: Literal["fp32", "bf16"] = "fp32"
    warmup: int = 1
    repeats: int = 3
    skip_uncached: bool = False
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "repeats"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise InvalidInputError(f"warmup must be >= 0, got {self.warmup}")
        if self.tokens is not None and self.tokens < 1:
            raise InvalidInputError(f"tokens must be >= 1, got {self.tokens}")
        if self.dtype not in ("fp32", "bf16"):
            raise InvalidInputError(f"dtype must be fp32 or bf16, got {self.dtype!r}")


@dataclass
class GeneratorBenchResult:
    device: str
    model: str
    params_m: float
    batch_size: int
    tokens: int
    cfg_scale: float
    cached_s: float  # median seconds per batch
    uncached_s: float | None
    cached_tokens_per_s: float
    uncached_tokens_per_s: float | None
    cached_images_per_s: float
    uncached_images_per_s: float | None
    cache_speedup: float | None  # uncached seconds / cached seconds
    pipeline_images_per_s: float | None  # AR (cached) + tokenizer decoding
    cached_equals_uncached: bool | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
                f"KV-cache speed-up (uncached / cached time): {f(self.cache_speedup)}",
                f"pipeline images/s (AR + decode): {f(self.pipeline_images_per_s)}",
                f"cached == uncached samples: {self.cached_equals_uncached}",
            ]
        )


def _time_once(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def run_generator_benchmark(cfg: GeneratorBenchConfig) -> GeneratorBenchResult:
    """Time AR sampling with and without the KV cache (interleaved); see the module doc."""
    from flexitok.models.flextok import FlexTok
    from flexitok.models.generator import Generator, generator_preset
    from flexitok.pipelines.conditions import placeholder_condition
    from flexitok.sampling.ar import ARSamplingConfig, generate

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if cfg.generator is not None:
        gen = Generator.from_pretrained(cfg.generator, device=device)
        name = cfg.generator
    else:
        torch.manual_seed(cfg.seed)
        gen = Generator(generator_preset(cfg.preset, num_classes=10)).to(device).eval()
        name = f"preset {cfg.preset}"
    k = cfg.tokens or gen.config.n_tokens
    if not 1 <= k <= gen.config.n_tokens:
        raise InvalidInputError(f"tokens must be in 1..{gen.config.n_tokens}, got {k}")
    b = cfg.batch_size
    dev = gen.tok_emb.weight.device
    condition = placeholder_condition(gen.conditioning, b)  # stand-in labels / prompt features

    def sample(use_cache: bool) -> torch.Tensor:
        scfg = ARSamplingConfig(
            n_tokens=k, temperature=cfg.temperature, guidance_scale=cfg.cfg_scale, use_cache=use_cache
        )
        return generate(gen, scfg, condition, generator=torch.Generator(device=dev).manual_seed(cfg.seed))

    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.dtype == "bf16" else nullcontext()
    paths = [True] if cfg.skip_uncached else [True, False]
    times: dict[bool, list[float]] = {p: [] for p in paths}
    outs: dict[bool, torch.Tensor] = {}
    with ctx:
        for _ in range(cfg.warmup):
            for p in paths:
                sample(p)
        for r in range(cfg.repeats):
            for use_cache in paths if r % 2 == 0 else paths[::-1]:
                seconds, outs[use_cache] = _time_once(functools.partial(sample, use_cache), device)
                times[use_cache].append(seconds)
    t_c = statistics.median(times[True])
    t_u = statistics.median(times[False]) if False in times else None
    pipeline = None
    if cfg.tokenizer is not None:
        tok = FlexTok.from_pretrained(cfg.tokenizer, device=device)
        if tok.vocab_size != gen.vocab_size:
            raise InvalidInputError(f"tokenizer vocab {tok.vocab_size} != generator vocab {gen.vocab_size}")
        with ctx:
            for _ in range(cfg.warmup):
                tok.detokenize(sample(True), cfg.decode)
            t_p = statistics.median(
                _time_once(lambda: tok.detokenize(sample(True), cfg.decode), device)[0] for _ in range(cfg.repeats)
            )
        pipeline = b / t_p
    return GeneratorBenchResult(
        device=str(device),
        model=name,
        params_m=sum(p.numel() for p in gen.parameters()) / 1e6,
        batch_size=b,
        tokens=k,
        cfg_scale=cfg.cfg_scale,
        cached_s=t_c,
        uncached_s=t_u,
        cached_tokens_per_s=b * k / t_c,
        uncached_tokens_per_s=None if t_u is None else b * k / t_u,
        cached_images_per_s=b / t_c,
        uncached_images_per_s=None if t_u is None else b / t_u,
        cache_speedup=None if t_u is None else t_u / t_c,
        pipeline_images_per_s=pipeline,
        cached_equals_uncached=None if t_u is None else bool(torch.equal(outs[True], outs[False])),
    )
