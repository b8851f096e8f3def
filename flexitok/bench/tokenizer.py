"""Tokenizer benchmark in this process: images/s, seconds per image, peak memory and fraction of matmul peak.

::

    from flexitok import DecodeConfig
    from flexitok.bench import BenchConfig, run_benchmark
    report = run_benchmark(BenchConfig(model="tiny", decode=DecodeConfig(steps=1), batch_size=2))
    print(report.format_table())

The phases, FLOP counting and memory probes are those of :mod:`flexitok.bench.session`.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flexitok.bench.session import PHASES, Dtype, PhaseTiming, Session, SessionSpec
from flexitok.errors import InvalidInputError
from flexitok.sampling.decode import DecodeConfig
from flexitok.sampling.flow import decoder_passes


@dataclass
class BenchConfig:
    """What to benchmark. ``model``: a preset name (random weights) or a model name/path for ``from_pretrained``.

    ``decode`` sets the detokenize phase (its seed is unused: ``seed`` draws the weights, images and noise).
    ``phases``: a subset of ``tokenize``, ``detokenize``, ``decoder_pass`` (one decoder forward on
    ``[cond; uncond]``). ``threads``: ``torch.set_num_threads`` (None: leave it). ``peak_size``: the side of the
    square matmul that measures the peak. ``row_parallel``: ``FlexTok.enable_row_parallel`` for the decoder
    passes (CPU; ``threads`` workers of one intra-op thread each).
    """

    model: str = "tiny"
    batch_size: int = 4
    resolution: int | None = None
    device: str = "auto"
    dtype: Dtype = "fp32"
    compile: bool = False
    row_parallel: bool = False
    warmup: int = 1
    repeats: int = 3
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    seed: int = 0
    threads: int | None = None
    phases: tuple[str, ...] = PHASES
    peak_size: int = 2048

    def __post_init__(self) -> None:
        self.phases = tuple(self.phases)
        if self.repeats < 1:
            raise InvalidInputError(f"repeats must be >= 1, got {self.repeats}")
        if self.warmup < 0:
            raise InvalidInputError(f"warmup must be >= 0, got {self.warmup}")
        unknown = [p for p in self.phases if p not in PHASES]
        if unknown or not self.phases:
            raise InvalidInputError(f"phases must be a non-empty subset of {list(PHASES)}, got {list(self.phases)}")
        self.spec()  # validates the rest

    def spec(self) -> SessionSpec:
        """The session part (what to build), as plain data."""
        return SessionSpec(
            model=self.model,
            batch_size=self.batch_size,
            resolution=self.resolution,
            device=self.device,
            dtype=self.dtype,
            seed=self.seed,
            threads=self.threads,
            peak_size=self.peak_size,
            decode=self.decode.to_dict(),
        )


@dataclass
class PhaseStats:
    """One phase. Seconds are per call on one batch: the median (and minimum) over the timed repeats."""

    seconds_per_batch: float  # median
    min_seconds_per_batch: float
    images_per_second: float  # from the median
    seconds_per_image: float  # from the median
    peak_memory_mib: float  # absolute peak during the phase (CUDA: allocated tensors; CPU: resident set size)
    memory_increase_mib: float  # peak minus the level just before the phase
    gflops: float  # per call (matmul, conv and attention FLOPs)
    fraction_of_peak: float  # gflops / median seconds / matmul peak
    busy_seconds_per_batch: float = math.nan  # CPU: median CPU time / threads (what the load does not inflate)
    fraction_of_peak_busy: float = math.nan  # CPU: gflops / busy seconds / busy matmul peak

    @classmethod
    def from_seconds(
        cls,
        seconds: list[float],
        batch: int,
        flops: int,
        peak_flops: float,
        mem: tuple[float, float],
        busy: tuple[list[float], float] | None = None,
    ) -> PhaseStats:
        """``busy``: (busy seconds per call, busy matmul peak FLOP/s), CPU only."""
        med, best = statistics.median(seconds), min(seconds)
        busy_med = statistics.median(busy[0]) if busy else math.nan
        return cls(
            seconds_per_batch=med,
            min_seconds_per_batch=best,
            images_per_second=batch / med if med > 0 else math.inf,
            seconds_per_image=med / batch,
            peak_memory_mib=mem[0],
            memory_increase_mib=mem[1],
            gflops=flops / 1e9,
            fraction_of_peak=flops / med / peak_flops if med > 0 and peak_flops > 0 else 0.0,
            busy_seconds_per_batch=busy_med,
            fraction_of_peak_busy=flops / busy_med / busy[1] if busy and busy_med > 0 else math.nan,
        )


@dataclass
class BenchReport:
    config: BenchConfig
    model_name: str
    parameters: int
    device: str
    threads: int
    image_size: tuple[int, int]
    n_registers: int
    matmul_peak_gflops: float  # best large-matmul throughput in the run's dtype, measured in this run
    phases: dict[str, PhaseStats]
    matmul_peak_busy_gflops: float = math.nan  # CPU: the same on the busy clock

    @property
    def tokenize(self) -> PhaseStats:
        return self.phases["tokenize"]

    @property
    def detokenize(self) -> PhaseStats:
        return self.phases["detokenize"]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format_table(self) -> str:
        c = self.config
        guidance = describe_decode(c.decode)
        head = (
            f"model {self.model_name}: {self.parameters / 1e6:.1f}M params, {self.image_size[0]}x{self.image_size[1]} "
            f"images, {self.n_registers} tokens | device {self.device} ({self.threads} threads), {c.dtype}"
            f"{', compiled' if c.compile else ''}{', row-parallel' if c.row_parallel else ''}"
            f" | batch {c.batch_size}, {guidance}"
            f" | median of {c.repeats} after {c.warmup} warm-up | matmul peak {self.matmul_peak_gflops:.1f} GFLOP/s"
            + ("" if math.isnan(self.matmul_peak_busy_gflops) else f" ({self.matmul_peak_busy_gflops:.1f} busy)")
        )
        busy = not math.isnan(self.matmul_peak_busy_gflops)
        mem = "peak alloc MiB" if self.device.startswith("cuda") else "peak RSS MiB"
        lines = [
            head,
            f"{'phase':<13} {'images/s':>10} {'s/image':>10} {'min s/batch':>12} {mem:>15} {'increase MiB':>13} "
            f"{'GFLOP':>9} {'of peak':>8}" + (f" {'busy s':>8} {'busy of peak':>12}" if busy else ""),
        ]
        for name, s in self.phases.items():
            lines.append(
                f"{name:<13} {s.images_per_second:>10.3f} {s.seconds_per_image:>10.4f} {s.min_seconds_per_batch:>12.4f} "
                f"{s.peak_memory_mib:>15.1f} {s.memory_increase_mib:>13.1f} {s.gflops:>9.1f} {s.fraction_of_peak:>8.1%}"
                + (f" {s.busy_seconds_per_batch:>8.3f} {s.fraction_of_peak_busy:>12.1%}" if busy else "")
            )
        if "decoder_pass" in self.phases:
            lines.append("decoder_pass = one decoder forward on [cond; uncond] (2 x batch rows), the work of one step")
        if busy:
            lines.append(
                "busy = CPU time / threads, phase and peak matmul alike: the load of other jobs does not count"
            )
        return "\n".join(lines)


def describe_decode(d: DecodeConfig) -> str:
    """``"20 euler steps, guidance 7.5 (APG), 40 decoder passes/image"``."""
    g = d.guidance_scale
    guidance = "guidance off" if g == 1.0 else f"guidance {'schedule' if callable(g) else f'{g:g}'}"
    guidance += "" if g == 1.0 else f" ({'APG' if d.apg else 'CFG'})"
    if d.guidance_interval is not None and g != 1.0:
        guidance += f" for t in [{d.guidance_interval[0]:g}, {d.guidance_interval[1]:g}]"
    return f"{d.steps} {d.sampler} steps, {guidance}, {decoder_passes(d)} decoder passes/image"


def run_benchmark(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> BenchReport:
    """Build (or load) the model, then time each phase of ``cfg.phases`` on one random batch.

    Per phase: one eager call under the FLOP counter (it doubles as the first warm-up of an eager run), the
    remaining warm-up calls (with ``compile``, these pay the compilation), then ``repeats`` timed calls under the
    memory probe. The matmul peak is measured before and after the phases; the higher figure counts.
    """
    say = progress or (lambda _msg: None)
    say(f"building {cfg.model}")
    session = Session(cfg.spec())
    peak, peak_busy = session.matmul_peaks()
    flops: dict[str, int] = {}
    raw: dict[str, PhaseTiming] = {}
    for phase in cfg.phases:
        say(f"counting {phase} FLOPs")
        flops[phase] = session.flops(phase)
    if cfg.compile:
        say("compiling encoder and decoder (the warm-up pays the compile time)")
        session.compile()
    if cfg.row_parallel and not session.row_parallel():
        raise InvalidInputError(f"model {cfg.model} has no row-parallel decoder passes")
    for phase in cfg.phases:
        say(f"timing {phase}")
        for _ in range(cfg.warmup - (0 if cfg.compile else 1)):
            session.run(phase)
        raw[phase] = session.measure(phase, cfg.repeats)
    wall2, busy2 = session.matmul_peaks()
    peak, peak_busy = max(peak, wall2), max(peak_busy, busy2)
    on_cpu = session.device.type == "cpu"
    phases = {
        name: PhaseStats.from_seconds(
            t.seconds,
            cfg.batch_size,
            flops[name],
            peak,
            (t.peak_memory_mib, t.memory_increase_mib),
            (t.busy_seconds, peak_busy) if on_cpu else None,
        )
        for name, t in raw.items()
    }
    info = session.describe()
    return BenchReport(
        config=cfg,
        model_name=cfg.model,
        parameters=info["parameters"],
        device=info["device"],
        threads=info["threads"],
        image_size=(int(info["image_size"][0]), int(info["image_size"][1])),
        n_registers=info["n_registers"],
        matmul_peak_gflops=peak / 1e9,
        phases=phases,
        matmul_peak_busy_gflops=peak_busy / 1e9 if on_cpu else math.nan,
    )
