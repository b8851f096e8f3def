"""One benchmark session: build a FlexTok, time its phases, count their FLOPs and measure the matmul peak.

This module is self-contained on purpose. It imports only torch and flexitok's stable model API (the config
presets, ``FlexTok``, ``from_pretrained``, ``tokenize``/``detokenize``, the decoder's ``condition`` /
``null_condition`` / forward), so that ``flexitok bench compare REV`` can run *this file* against another
revision of the package, in a subprocess, and time both revisions with identical code (see
:mod:`flexitok.bench.compare`). Run as a script it answers JSON-line requests on stdin (:func:`serve`).

Phases (each timed as one call on one batch of ``batch_size`` random images):

* ``tokenize``: images -> token ids (VAE encoder + resampler + FSQ);
* ``detokenize``: all tokens -> images (``steps`` decoder passes + VAE decoder), with the configured guidance;
* ``decoder_pass``: one decoder forward on the guided batch ``[cond; uncond]`` (2 x batch_size rows), i.e. the
  work of one sampling step.

FLOPs are counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention: the analytic count) on one
eager call; the fraction of peak is that count over the measured time over the fp32 (or bf16) throughput of a
large square matmul measured in the same process. On the CPU every call is also timed by the process's CPU
time divided by the thread count (the *busy* clock): on a machine shared with other jobs, wall time includes
the time slices the scheduler gave to others, CPU time does not, so the busy fraction of peak (phase and
matmul both on that clock) is the figure that does not depend on the load. Presets get random weights, drawn per parameter from a
generator seeded by the parameter's name, so two revisions with the same parameter names get the same weights.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import zlib
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

Dtype = Literal["fp32", "bf16"]
PHASES = ("tokenize", "detokenize", "decoder_pass")
PROTOCOL_PREFIX = "@@flexitok-bench "

# SD-style AutoencoderKL (downsampling 8) with 16 latent channels, for presets that name no VAE: the benchmark
# needs the architecture's cost, not trained weights. (The same as flexitok.models.vae.sd_style_vae_config, kept
# here rather than imported: this module also runs against older revisions that lack it, see compare.py.)
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


def _invalid(msg: str) -> Exception:
    try:
        from flexitok.errors import InvalidInputError
    except ImportError:  # pragma: no cover - every revision has it; keep the session usable regardless
        return ValueError(msg)
    return InvalidInputError(msg)


@dataclass
class SessionSpec:
    """What one session builds: plain JSON-able data, so a parent process can send it to a worker of another
    revision. ``model``: a preset name (random weights) or a model name/path for ``from_pretrained``.
    ``decode``: the decoder settings as ``DecodeConfig.to_dict()`` (revisions before DecodeConfig get the
    steps, guidance scale and APG switch as keyword arguments). ``threads`` sets ``torch.set_num_threads``.
    """

    model: str = "tiny"
    batch_size: int = 4
    resolution: int | None = None  # presets only: square image side (default: the preset's)
    device: str = "auto"
    dtype: Dtype = "fp32"
    seed: int = 0
    threads: int | None = None
    peak_size: int = 2048
    decode: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("batch_size", "peak_size"):
            if getattr(self, name) < 1:
                raise _invalid(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in ("fp32", "bf16"):
            raise _invalid(f"dtype must be fp32 or bf16, got {self.dtype!r}")
        if self.resolution is not None and self.resolution < 1:
            raise _invalid(f"resolution must be positive, got {self.resolution}")
        if self.threads is not None and self.threads < 1:
            raise _invalid(f"threads must be >= 1, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SessionSpec:
        return cls(**d)


def detokenize_call(model: Any, tokens: Tensor, noise: Tensor, decode: dict[str, Any]) -> Tensor:
    """``model.detokenize`` with the settings ``decode`` in whatever form this revision takes them."""
    try:
        from flexitok.sampling.decode import DecodeConfig
    except ImportError:  # revisions before DecodeConfig: keyword arguments, official sampler only
        defaults = {"steps": 20, "guidance_scale": 7.5, "apg": True}
        unknown = sorted(k for k in decode if k not in defaults and k != "seed")
        if unknown:
            raise _invalid(f"this revision of flexitok has no decoder options {unknown}") from None
        return model.detokenize(tokens, noise=noise, **{k: decode.get(k, v) for k, v in defaults.items()})
    known = {f.name for f in dataclasses.fields(DecodeConfig)}
    extra = sorted(set(decode) - known)
    if extra:
        raise _invalid(f"this revision's DecodeConfig has no fields {extra}")
    d = dict(decode)
    if d.get("guidance_interval") is not None:
        d["guidance_interval"] = tuple(d["guidance_interval"])
    return model.detokenize(tokens, DecodeConfig(**d), noise=noise)


# ---------------------------------------------------------------------------------------------- devices, memory
def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``mps`` -> a device that exists here."""
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise _invalid("device cuda was requested but no CUDA GPU is available; use cpu or auto")
    if name == "mps" and not mps_ok:
        raise _invalid("device mps was requested but Apple MPS is not available; use cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise _invalid(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for queued accelerator work (CUDA, MPS) so wall-clock timings cover it; a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


_MIB = 1024.0 * 1024.0


def _read_status_kib(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
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


class MemoryProbe:
    """Peak memory over a ``with`` block: CUDA allocated tensors, or the CPU process's peak resident set size
    (Linux ``VmHWM`` after resetting it; elsewhere the lifetime peak), and its increase over the level before."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = 0.0
        self.increase_mib = 0.0

    def __enter__(self) -> MemoryProbe:
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


# ---------------------------------------------------------------------------------------------- FLOPs and peak
def flop_counter() -> Any:
    """A ``torch.utils.flop_counter.FlopCounterMode`` (matmul, conv, attention) that also counts the CPU flash
    attention kernel, which the stock counter does not know."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    aten = torch.ops.aten
    custom: dict[Any, Any] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):

        def cpu_flash(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)

        custom[aten._scaled_dot_product_flash_attention_for_cpu] = cpu_flash
    return FlopCounterMode(display=False, custom_mapping=custom)


def count_flops(fn: Any) -> int:
    """FLOPs of ``fn()`` by :func:`flop_counter`."""
    counter = flop_counter()
    with counter:
        fn()
    return int(counter.get_total_flops())


def busy_clock() -> float:
    """Seconds of CPU time of this process divided by torch's thread count (see the module doc)."""
    return time.process_time() / torch.get_num_threads()


def matmul_peaks(device: torch.device, dtype: Dtype, size: int = 2048, repeats: int = 3) -> tuple[float, float]:
    """Best FLOP/s of a ``size`` x ``size`` x ``size`` matmul (the reference for fractions of peak), on the wall
    clock and on the busy clock (the latter is meaningful on the CPU only)."""
    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, tdtype)
    b = torch.randn(size, size, generator=gen).to(device, tdtype)
    out = torch.empty(size, size, device=device, dtype=tdtype)
    torch.mm(a, b, out=out)  # warm-up
    synchronize(device)
    best, best_busy = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), busy_clock()
        torch.mm(a, b, out=out)
        synchronize(device)
        best, best_busy = min(best, time.perf_counter() - t0), min(best_busy, busy_clock() - c0)
    flops = 2.0 * size**3
    return flops / best, flops / max(best_busy, 1e-9)


def matmul_peak(device: torch.device, dtype: Dtype, size: int = 2048, repeats: int = 3) -> float:
    """Best wall-clock FLOP/s of a ``size``-cubed matmul (see :func:`matmul_peaks`)."""
    return matmul_peaks(device, dtype, size, repeats)[0]


# ---------------------------------------------------------------------------------------------- the model
def model_config(cfg: SessionSpec) -> Any:
    """The FlexTokConfig for a preset benchmark (None when ``cfg.model`` is not a preset)."""
    from flexitok.config import PRESETS, preset, tiny_config

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


@torch.no_grad()
def randomize_by_name(model: Any, seed: int, std: float = 0.02) -> None:
    """Give every encoder/decoder parameter N(0, std^2) values (adaLN-zero layers included, so outputs depend
    on every weight) and re-initialise the VAE module by module, each from a generator seeded by its name."""

    def gen(name: str) -> torch.Generator:
        return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))

    for part in ("encoder", "decoder"):
        for name, p in getattr(model, part).named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen(f"{part}.{name}")).mul_(std).to(p))
    for name, m in model.vae.named_modules():
        if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)):
            torch.manual_seed(seed * 1_000_003 + zlib.crc32(f"vae.{name}".encode()))
            m.reset_parameters()


def build_model(cfg: SessionSpec, device: torch.device) -> Any:
    from flexitok.models.flextok import FlexTok

    config = model_config(cfg)
    if config is not None:
        torch.manual_seed(cfg.seed)
        model = FlexTok(config)
        randomize_by_name(model, cfg.seed)
        return model.to(device).eval()
    if cfg.resolution is not None:
        raise _invalid("resolution applies to presets only; a saved model has a fixed resolution")
    return FlexTok.from_pretrained(cfg.model, device=device).eval()


@dataclass
class PhaseTiming:
    """Raw measurements of one phase in one process."""

    seconds: list[float]
    busy_seconds: list[float]  # CPU time / threads per call
    flops: int
    peak_memory_mib: float
    memory_increase_mib: float


class Session:
    """A model, its inputs and the phases of :data:`PHASES` as zero-argument callables."""

    def __init__(self, cfg: SessionSpec) -> None:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model = build_model(cfg, self.device)
        self.autocast: AbstractContextManager[Any] = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.dtype == "bf16" else nullcontext()
        )
        gen = torch.Generator().manual_seed(cfg.seed)
        h, w = self.model.image_size
        b = cfg.batch_size
        self.images = (torch.rand(b, 3, h, w, generator=gen) * 2 - 1).to(self.device)
        self.noise = self.model.initial_noise(b, gen)
        with torch.inference_mode(), self.autocast:
            self.tokens = self.model.tokenize(self.images)
            dec = self.model.decoder
            keep = torch.full((b,), self.model.n_registers, dtype=torch.long, device=self.device)
            cond = dec.condition(self.model.fsq.ids_to_codes(self.tokens), keep)
            self.pass_cond = torch.cat([cond, dec.null_condition(b).to(cond.dtype)])
        self.pass_x = torch.cat([self.noise, self.noise])
        self.pass_t = torch.full((2 * b,), 0.5, device=self.device)
        self.compiled = False
        self.outputs: dict[str, Tensor] = {}

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def compile(self) -> None:
        """``torch.compile`` the encoder and decoder (the first call of each phase then pays the compile)."""
        if not self.compiled:
            if type(self.model).compile is not torch.nn.Module.compile:  # the opt-in inference API
                self.model.compile()
            else:  # revisions without it
                self.model.encoder.compile()
                self.model.decoder.compile()
            self.compiled = True

    def row_parallel(self) -> bool:
        """Turn on the model's row-parallel decoder passes (``FlexTok.enable_row_parallel``, torch's thread count
        as workers) for ``detokenize`` and ``decoder_pass``. False, changing nothing, on revisions without it."""
        enable = getattr(self.model, "enable_row_parallel", None)
        if enable is None:
            return False
        enable()
        return True

    def _call(self, phase: str) -> Tensor:
        m, c = self.model, self.cfg
        if phase == "tokenize":
            return m.tokenize(self.images)
        if phase == "detokenize":
            return detokenize_call(m, self.tokens, self.noise, c.decode)
        if phase == "decoder_pass":
            # decoder_velocity: the decoder, or its row-parallel split when enabled (revisions without it: the decoder)
            velocity = m.decoder_velocity() if hasattr(m, "decoder_velocity") else m.decoder
            return velocity(self.pass_x, self.pass_t, self.pass_cond)
        raise _invalid(f"unknown phase {phase!r}")

    def run(self, phase: str) -> tuple[float, float]:
        """Run ``phase`` once; its wall-clock seconds (accelerator work included) and busy seconds."""
        with torch.inference_mode(), self.autocast:
            synchronize(self.device)
            t0, c0 = time.perf_counter(), busy_clock()
            out = self._call(phase)
            synchronize(self.device)
            seconds, busy = time.perf_counter() - t0, busy_clock() - c0
        self.outputs[phase] = out
        return seconds, busy

    def flops(self, phase: str) -> int:
        """FLOPs of one eager call of ``phase`` (counted on the uncompiled model)."""
        with torch.inference_mode(), self.autocast:
            return count_flops(lambda: self._call(phase))

    def measure(self, phase: str, repeats: int) -> PhaseTiming:
        """``repeats`` timed calls (FLOPs left at 0: see :meth:`flops`)."""
        with MemoryProbe(self.device) as mem:
            runs = [self.run(phase) for _ in range(repeats)]
        return PhaseTiming(
            seconds=[r[0] for r in runs],
            busy_seconds=[r[1] for r in runs],
            flops=0,
            peak_memory_mib=mem.peak_mib,
            memory_increase_mib=mem.increase_mib,
        )

    def matmul_peaks(self) -> tuple[float, float]:
        """(wall, busy) FLOP/s of the reference matmul."""
        return matmul_peaks(self.device, self.cfg.dtype, self.cfg.peak_size)

    def describe(self) -> dict[str, Any]:
        import flexitok.config

        return {
            "package": str(Path(flexitok.config.__file__).resolve().parent),  # the revision under test
            "parameters": self.parameters,
            "device": str(self.device),
            "image_size": list(self.model.image_size),
            "n_registers": int(self.model.n_registers),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }


# ---------------------------------------------------------------------------------------------- worker protocol
def serve(inp: Any = None, out: Any = None) -> None:
    """Answer JSON-line requests (one per line on ``inp``) with JSON lines prefixed by :data:`PROTOCOL_PREFIX`.

    Requests: ``{"op": "setup", "config": {...}}``, ``{"op": "flops", "phase": p}``,
    ``{"op": "measure", "phase": p, "repeats": n}``, ``{"op": "peak"}``, ``{"op": "compile"}``,
    ``{"op": "row_parallel"}`` (answers ``supported``),
    ``{"op": "save", "path": file}`` (the last output of every phase, via ``torch.save``), ``{"op": "quit"}``.
    Every answer has ``ok``; failures carry ``error`` instead of raising.
    """
    inp = inp or sys.stdin
    out = out or sys.stdout
    session: Session | None = None
    for line in inp:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.get("op")
        try:
            if op == "quit":
                reply: dict[str, Any] = {"ok": True}
                print(PROTOCOL_PREFIX + json.dumps(reply), file=out, flush=True)
                return
            if op == "setup":
                session = Session(SessionSpec.from_dict(req["config"]))
                reply = {"ok": True, **session.describe()}
            elif session is None:
                raise RuntimeError("setup first")
            elif op == "flops":
                reply = {"ok": True, "flops": session.flops(req["phase"])}
            elif op == "measure":
                timing = session.measure(req["phase"], int(req.get("repeats", 1)))
                reply = {"ok": True, **dataclasses.asdict(timing)}
            elif op == "peak":
                wall, busy = session.matmul_peaks()
                reply = {"ok": True, "flops_per_second": wall, "busy_flops_per_second": busy}
            elif op == "compile":
                session.compile()
                reply = {"ok": True}
            elif op == "row_parallel":
                reply = {"ok": True, "supported": session.row_parallel()}
            elif op == "save":
                torch.save({k: v.detach().float().cpu() for k, v in session.outputs.items()}, req["path"])
                reply = {"ok": True}
            else:
                raise RuntimeError(f"unknown op {op!r}")
        except Exception as e:  # reported to the parent, which raises with the message
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(PROTOCOL_PREFIX + json.dumps(reply), file=out, flush=True)


if __name__ == "__main__":
    serve()
