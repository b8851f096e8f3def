"""Tokenizer throughput benchmark: tokenize / detokenize images per second, seconds per image and peak memory.

Used by ``flexitok bench tokenizer``; importable so tests and scripts can run it::

    from flexitok import DecodeConfig
    from flexitok.bench import BenchConfig, run_benchmark
    report = run_benchmark(BenchConfig(model="tiny", decode=DecodeConfig(steps=1), batch_size=2))
    print(report.format_table())

Weights are random for presets (speed does not depend on their values). Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA; on CPU it is the process's peak resident set size during the phase
(Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``; elsewhere the lifetime peak from
``resource.getrusage``), reported together with its increase over the resident size before the phase.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from flexitok.config import PRESETS, FlexTokConfig, preset, tiny_config
from flexitok.errors import InvalidInputError
from flexitok.models.flextok import FlexTok
from flexitok.sampling.decode import DecodeConfig
from flexitok.utils.device import resolve_device

Dtype = Literal["fp32", "bf16"]

# SD-style AutoencoderKL (downsampling 8) with 16 latent channels, for presets that name no VAE: the benchmark
# needs the architecture's cost, not trained weights.
BENCH_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
}


@dataclass
class BenchConfig:
    """What to benchmark. ``model``: a preset name (random weights) or a model name/path for ``from_pretrained``.

    ``decode`` sets the detokenize phase (its seed is unused: ``seed`` draws the weights, images and noise)."""

    model: str = "tiny"
    batch_size: int = 4
    resolution: int | None = None  # presets only: square image side (default: the preset's)
    device: str = "auto"
    dtype: Dtype = "fp32"
    compile: bool = False
    warmup: int = 1
    repeats: int = 3
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "repeats"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise InvalidInputError(f"warmup must be >= 0, got {self.warmup}")
        if self.dtype not in ("fp32", "bf16"):
            raise InvalidInputError(f"dtype must be fp32 or bf16, got {self.dtype!r}")
        if self.resolution is not None and self.resolution < 1:
            raise InvalidInputError(f"resolution must be positive, got {self.resolution}")


@dataclass
class PhaseStats:
    """Timing and memory of one phase; seconds are the median over repeats of one batch."""

    seconds_per_batch: float
    images_per_second: float
    seconds_per_image: float
    peak_memory_mib: float  # absolute peak during the phase (CUDA: allocated tensors; CPU: resident set size)
    memory_increase_mib: float  # peak minus the level just before the phase


@dataclass
class BenchReport:
    config: BenchConfig
    model_name: str
    parameters: int
    device: str
    image_size: tuple[int, int]
    n_registers: int
    tokenize: PhaseStats
    detokenize: PhaseStats

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format_table(self) -> str:
        c = self.config
        d = c.decode
        guidance = "off" if d.guidance_scale == 1.0 else f"{d.guidance_scale:g} ({'APG' if d.apg else 'CFG'})"
        head = (
            f"model {self.model_name}: {self.parameters / 1e6:.1f}M params, {self.image_size[0]}x{self.image_size[1]} "
            f"images, {self.n_registers} tokens | device {self.device}, {c.dtype}"
            f"{', compiled' if c.compile else ''} | batch {c.batch_size}, {d.steps} steps, guidance {guidance}, "
            f"median of {c.repeats} after {c.warmup} warm-up"
        )
        mem = "peak alloc MiB" if self.device.startswith("cuda") else "peak RSS MiB"
        lines = [head, f"{'phase':<11} {'images/s':>10} {'s/image':>10} {mem:>15} {'increase MiB':>13}"]
        for name, s in (("tokenize", self.tokenize), ("detokenize", self.detokenize)):
            lines.append(
                f"{name:<11} {s.images_per_second:>10.3f} {s.seconds_per_image:>10.4f} "
                f"{s.peak_memory_mib:>15.1f} {s.memory_increase_mib:>13.1f}"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- memory probes
_MIB = 1024.0 * 1024.0


def _read_status_kib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset Linux's VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _read_status_kib("VmHWM") is not None


def _rusage_peak_mib() -> float:
    import resource

    peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak / _MIB if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux


class _MemoryProbe:
    """Peak memory over a ``with`` block."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = 0.0
        self.increase_mib = 0.0

    def __enter__(self) -> _MemoryProbe:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / _MIB
        else:
            self._hwm = _reset_rss_peak()
            rss = _read_status_kib("VmRSS")
            self._start = rss / 1024.0 if rss is not None else _rusage_peak_mib()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / _MIB
        else:
            hwm = _read_status_kib("VmHWM") if self._hwm else None
            self.peak_mib = hwm / 1024.0 if hwm is not None else _rusage_peak_mib()
        self.increase_mib = max(0.0, self.peak_mib - self._start)


# ---------------------------------------------------------------------------------------------- benchmark
def synchronize(device: torch.device) -> None:
    """Wait for queued accelerator work (CUDA, MPS) so wall-clock timings cover it; a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def bench_config_for(cfg: BenchConfig) -> FlexTokConfig | None:
    """The model config for a preset benchmark (None when ``cfg.model`` is not a preset)."""
    if cfg.model not in PRESETS:
        return None
    if cfg.model == "tiny":
        config = tiny_config(image_size=cfg.resolution) if cfg.resolution else tiny_config()
    else:
        config = preset(cfg.model)
        if cfg.resolution:
            config = dataclasses.replace(config, image_size=(cfg.resolution, cfg.resolution))
    vae = config.vae
    if vae.kind == "diffusers" and vae.diffusers_config is None and vae.pretrained is None:
        config.vae = dataclasses.replace(
            vae, diffusers_config={**BENCH_VAE_CONFIG, "latent_channels": vae.latent_channels}
        )
    return config


def _build_model(cfg: BenchConfig, device: torch.device) -> FlexTok:
    config = bench_config_for(cfg)
    if config is not None:
        torch.manual_seed(cfg.seed)
        return FlexTok(config).to(device).eval()
    if cfg.resolution is not None:
        raise InvalidInputError("--resolution applies to presets only; a saved model has a fixed resolution")
    return FlexTok.from_pretrained(cfg.model, device=device).eval()


def _time_phase(
    fn: Callable[[], Tensor], cfg: BenchConfig, device: torch.device, autocast: Any
) -> tuple[Tensor, PhaseStats]:
    out: Tensor | None = None
    with torch.inference_mode(), autocast:
        for _ in range(cfg.warmup):
            out = fn()
        synchronize(device)
        times = []
        with _MemoryProbe(device) as mem:
            for _ in range(cfg.repeats):
                t0 = time.perf_counter()
                out = fn()
                synchronize(device)
                times.append(time.perf_counter() - t0)
    assert out is not None
    t = statistics.median(times)
    stats = PhaseStats(
        seconds_per_batch=t,
        images_per_second=cfg.batch_size / t if t > 0 else math.inf,
        seconds_per_image=t / cfg.batch_size,
        peak_memory_mib=mem.peak_mib,
        memory_increase_mib=mem.increase_mib,
    )
    return out, stats


def run_benchmark(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> BenchReport:
    """Build (or load) the model, then time tokenize and detokenize of one random batch. See the module doc."""
    device = resolve_device(cfg.device)
    say = progress or (lambda _msg: None)
    say(f"building {cfg.model} on {device}")
    model = _build_model(cfg, device)
    if cfg.compile:
        say("compiling encoder and decoder (the warm-up pays the compile time)")
        model.encoder.compile()
        model.decoder.compile()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.dtype == "bf16" else nullcontext()

    gen = torch.Generator().manual_seed(cfg.seed)
    h, w = model.image_size
    images = (torch.rand(cfg.batch_size, 3, h, w, generator=gen) * 2 - 1).to(device)
    noise = model.initial_noise(cfg.batch_size, gen)
    # Guidance-free runs use a single decoder pass per step; otherwise two (conditional + unconditional).

    say("timing tokenize")
    tokens, tok_stats = _time_phase(lambda: model.tokenize(images), cfg, device, autocast)
    say("timing detokenize")
    _, detok_stats = _time_phase(lambda: model.detokenize(tokens, cfg.decode, noise=noise), cfg, device, autocast)
    return BenchReport(
        config=cfg,
        model_name=cfg.model,
        parameters=sum(p.numel() for p in model.parameters()),
        device=str(device),
        image_size=(h, w),
        n_registers=model.n_registers,
        tokenize=tok_stats,
        detokenize=detok_stats,
    )
