"""``TrainerConfig``: the optimisation, precision, parallelism and checkpointing options of every training run.

It is the ``train:`` section of each run config (tokenizer, VAE, generator), parsed by
:func:`flexitok.train.config.load_run_config`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from os import PathLike
from typing import Literal

from flexitok.errors import ConfigError

Precision = Literal["fp32", "bf16"]


@dataclass
class TrainerConfig:
    out_dir: str = "runs/train"
    steps: int = 1000
    batch_size: int = 32  # per process (per micro-batch)
    lr: float = 1e-4
    min_lr: float = 0.0  # cosine decay floor (absolute)
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 0
    grad_clip: float = 1.0  # 0 = off
    grad_accum: int = 1
    ema_decay: float = 0.0  # 0 = off
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step))
    precision: Precision = "bf16"  # bf16 autocast on CUDA; on CPU only with cpu_autocast
    cpu_autocast: bool = False  # also autocast bf16 on CPU (smoke tests of the bf16 path; slow without bf16 units)
    compile: bool = False
    activation_checkpointing: bool = False
    fsdp: bool = False  # FSDP2 (fully_shard) with sharded DCP checkpoints; torchrun, NCCL on CUDA, Gloo on CPU
    log_every: int = 10
    ckpt_every: int = 1000
    eval_every: int = 0  # 0 = off
    seed: int = 0
    num_workers: int = 0
    keep_checkpoints: int = 2
    cpu_threads: int | None = None  # torch.set_num_threads on CPU runs (None = torch's default)
    resume: bool = False  # continue from out_dir/last (required when out_dir already holds a checkpoint)
    resume_fallback: bool = True  # a corrupt `last`: resume from the newest intact checkpoint (else refuse)
    allow_config_change: bool = False  # resume although hyperparameters differ from the checkpoint's
    progress: bool = True
    trackers: tuple[str, ...] = ("tensorboard",)  # beside metrics.jsonl: tensorboard (when installed), wandb

    def __post_init__(self) -> None:
        _validate(self)

    def warmup_note(self) -> str | None:
        """The documented rule for a warm-up longer than the run: allowed (smoke runs of a real config, a run to
        be resumed with more steps), the learning rate then rises linearly for the whole run and never reaches
        ``lr``; the trainer prints this note so it is never silent."""
        if self.warmup_steps <= self.steps:
            return None
        peak = self.lr * self.steps / self.warmup_steps
        return (
            f"note: train.warmup_steps ({self.warmup_steps}) > train.steps ({self.steps}): the learning rate warms "
            f"up for the whole run and peaks at {peak:.3g}, not train.lr ({self.lr:g})"
        )


# ---------------------------------------------------------------------------------------------- the schema

MAX_SEED = 2**63 - 1  # torch generators take 64 bits; derived per-rank / per-epoch seeds wrap modulo 2**64
_MAX_COUNT = 2**62  # steps, batch sizes, intervals: far beyond any run, small enough for every int64 in torch
_MAX_WORKERS = 1024
_MAX_THREADS = 4096


def _fail(key: str, rule: str, value: object) -> ConfigError:
    return ConfigError(f"train.{key} must be {rule}, got {value!r}")


def _int(cfg: TrainerConfig, key: str, lo: int, hi: int = _MAX_COUNT, optional: bool = False) -> None:
    v = getattr(cfg, key)
    if v is None and optional:
        return
    rule = f"an integer in [{lo}, {hi}]" + (" or null" if optional else "")
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _fail(key, rule, v)


def _float(
    cfg: TrainerConfig, key: str, lo: float, hi: float = math.inf, hi_open: bool = False, lo_open: bool = False
) -> float:
    v = getattr(cfg, key)
    rule = f"a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open or hi == math.inf else ']'}"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _fail(key, rule, v)
    v = float(v)
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        raise _fail(key, rule, v)
    setattr(cfg, key, v)
    return v


def _validate(cfg: TrainerConfig) -> None:
    """Every field typed and in range (finite floats), so nothing reaches torch unchecked: a :class:`ConfigError`
    names the dotted key (``train.betas``) and what it accepts."""
    for key in ("ema_warmup", "cpu_autocast", "compile", "activation_checkpointing", "fsdp", "resume"):
        if not isinstance(getattr(cfg, key), bool):
            raise _fail(key, "true or false", getattr(cfg, key))
    for key in ("resume_fallback", "allow_config_change", "progress"):
        if not isinstance(getattr(cfg, key), bool):
            raise _fail(key, "true or false", getattr(cfg, key))
    if not isinstance(cfg.out_dir, (str, PathLike)) or not str(cfg.out_dir) or "\x00" in str(cfg.out_dir):
        raise _fail("out_dir", "a non-empty path", cfg.out_dir)
    if cfg.precision not in ("fp32", "bf16"):
        raise _fail("precision", "'fp32' or 'bf16'", cfg.precision)
    for key in ("steps", "batch_size", "grad_accum", "log_every", "ckpt_every"):
        _int(cfg, key, 1)
    for key in ("warmup_steps", "eval_every", "keep_checkpoints"):
        _int(cfg, key, 0)
    _int(cfg, "seed", 0, MAX_SEED)
    _int(cfg, "num_workers", 0, _MAX_WORKERS)
    _int(cfg, "cpu_threads", 1, _MAX_THREADS, optional=True)
    lr = _float(cfg, "lr", 0.0, lo_open=True)
    _float(cfg, "min_lr", 0.0, lr)
    _float(cfg, "weight_decay", 0.0)
    _float(cfg, "grad_clip", 0.0)  # 0 = off; NaN would silently turn clipping off
    _float(cfg, "ema_decay", 0.0, 1.0, hi_open=True)
    betas = cfg.betas
    rule = "two finite numbers in [0, 1)"
    if isinstance(betas, (str, bytes)) or not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise _fail("betas", rule, betas)
    if any(isinstance(b, bool) or not isinstance(b, (int, float)) or not (0.0 <= float(b) < 1.0) for b in betas):
        raise _fail("betas", rule, tuple(betas))
    cfg.betas = (float(betas[0]), float(betas[1]))
    known = ("tensorboard", "wandb")
    trackers = cfg.trackers
    if isinstance(trackers, str) or not isinstance(trackers, (tuple, list)) or not all(t in known for t in trackers):
        raise _fail("trackers", f"a list of {list(known)} (possibly empty)", trackers)
    cfg.trackers = tuple(trackers)


# Fields that may differ on resume without --allow-config-change: how a run is operated, not what it computes,
# and ``steps`` (continuing a run to a new step count is what resume is for; the schedule follows the new count).
OPERATIONAL_FIELDS = frozenset(
    {
        "out_dir",
        "steps",
        "log_every",
        "ckpt_every",
        "eval_every",
        "num_workers",
        "keep_checkpoints",
        "cpu_threads",
        "resume",
        "resume_fallback",
        "allow_config_change",
        "progress",
        "trackers",
    }
)
