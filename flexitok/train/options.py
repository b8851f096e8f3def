"""``TrainConfig``: the optimisation, precision, parallelism and checkpointing options of every training run.

It is the ``train:`` section of each run config (tokenizer, VAE, generator), parsed by
:func:`flexitok.train.config.load_run_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flexitok.errors import InvalidInputError

Precision = Literal["fp32", "bf16"]


@dataclass
class TrainConfig:
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

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        checks = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.min_lr <= self.lr, f"min_lr must lie in [0, lr={self.lr}], got {self.min_lr}"),
            (0 <= self.ema_decay < 1, f"ema_decay must lie in [0, 1), got {self.ema_decay}"),
            (self.precision in ("fp32", "bf16"), f"precision must be 'fp32' or 'bf16', got {self.precision!r}"),
            (len(self.betas) == 2, f"betas must have two entries, got {self.betas}"),
            (self.log_every >= 1 and self.ckpt_every >= 1, "log_every and ckpt_every must be >= 1"),
            (self.warmup_steps >= 0 and self.eval_every >= 0, "warmup_steps and eval_every must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidInputError(f"TrainConfig: {msg}")


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
    }
)
