"""Training metrics: accumulated on the device between log steps, written to metrics.jsonl (and TensorBoard).

Losses and task logs stay tensors until a log step, so a training step never waits for the device; a
non-finite loss is remembered on the device too and checked at log and checkpoint steps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from flexitok.errors import TrainingError
from flexitok.train.parallel import DistInfo
from flexitok.utils.files import atomic_write_bytes


def as_float(v: Any) -> float:
    return float(v.detach().float().item()) if isinstance(v, Tensor) else float(v)


class MetricsWindow:
    """Sums of the loss and task logs over the updates since the last log step (no host sync when adding)."""

    def __init__(self, grad_accum: int) -> None:
        self.grad_accum = grad_accum
        self.nonfinite: Tensor | None = None  # any non-finite micro-batch loss since the last check
        self.reset()

    def reset(self) -> None:
        self.start, self.images, self.updates = time.perf_counter(), 0, 0
        self.loss_sum: Any = 0.0
        self.logs_sum: dict[str, Any] = {}

    def add_micro_batch(self, loss: Tensor, logs: dict[str, Any]) -> None:
        loss = loss.detach().float()
        bad = ~torch.isfinite(loss)
        self.nonfinite = bad if self.nonfinite is None else self.nonfinite | bad
        self.loss_sum += loss / self.grad_accum
        self.add_logs(logs)

    def add_logs(self, logs: dict[str, Any]) -> None:
        """Logs of one micro-batch (0-d tensors or floats), averaged over the update's micro-batches."""
        for k, v in logs.items():
            v = v.detach().float() if isinstance(v, Tensor) else float(v)
            self.logs_sum[k] = self.logs_sum.get(k, 0.0) + v / self.grad_accum

    def end_update(self, images: int) -> None:
        self.images += images
        self.updates += 1

    def loss_is_finite(self, info: DistInfo) -> bool:
        """No non-finite loss on any process since the last call (one device sync)."""
        bad = self.nonfinite if self.nonfinite is not None else torch.zeros((), dtype=torch.bool)
        self.nonfinite = None
        flag = bad.to(info.device, torch.float32).reshape(1)
        if info.enabled:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return not bool(flag.item())

    def summary(self, info: DistInfo) -> tuple[float, float, dict[str, float]]:
        """(mean loss per update, images/s, mean task logs per update); resets.

        Under several processes the loss and every log term are averaged the same way: the mean per update on
        each process, then the mean over the processes that logged it (one all-reduce of all terms together).
        """
        images_per_s = self.images * info.world_size / max(time.perf_counter() - self.start, 1e-9)
        if not info.enabled:
            loss_t = torch.as_tensor(self.loss_sum, dtype=torch.float32, device=info.device) / self.updates
            logs = {k: as_float(v) / self.updates for k, v in self.logs_sum.items()}
            self.reset()
            return float(loss_t), images_per_s, logs
        keys_per_rank: list[Any] = [None] * info.world_size
        dist.all_gather_object(keys_per_rank, sorted(self.logs_sum))
        keys = sorted({k for ks in keys_per_rank for k in ks})  # a term some process did not log this window
        sums = [self.loss_sum, *(self.logs_sum.get(k, 0.0) for k in keys)]
        mine = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=info.device).reshape(()) for v in sums])
        logged = torch.tensor([True, *(k in self.logs_sum for k in keys)], dtype=torch.float64, device=info.device)
        full = torch.stack([mine / self.updates, logged])  # [2, 1 + terms]: per-update means, and who logged
        dist.all_reduce(full)
        means = (full[0] / full[1].clamp(min=1)).tolist()
        self.reset()
        return means[0], images_per_s, dict(zip(keys, means[1:], strict=True))


def cut_back(path: Path, step: int) -> int:
    """Remove the lines of ``metrics.jsonl`` logged after ``step`` (and a partial last line): a run killed after
    its last checkpoint logged steps that the resumed run logs again. Atomic; returns the lines removed."""
    if not path.is_file():
        return 0
    lines = path.read_bytes().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by kill -9 mid-write
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line if line.endswith(b"\n") else line + b"\n")
    if kept != lines:
        atomic_write_bytes(path, b"".join(kept))
    return len(lines) - len(kept)


def import_wandb() -> Any:
    """The ``wandb`` module (imported only when a run asks for it), or a clean error saying how to get it."""
    try:
        import wandb
    except ImportError:
        raise TrainingError(
            "train.trackers includes 'wandb' but the wandb package is not installed: pip install wandb "
            "(or drop wandb from train.trackers)"
        ) from None
    return wandb


class MetricsLogger:
    """metrics.jsonl always; the trackers of ``train.trackers`` beside it (rank 0 only): TensorBoard when it is
    installed (``<out_dir>/tb``), Weights & Biases (``wandb``; ``WANDB_MODE=offline`` works without a network).

    ``step``: where the run starts (the resumed checkpoint's step, 0 for a fresh run). What an earlier, killed
    run logged after it is cut back first (metrics.jsonl lines; TensorBoard events through ``purge_step``),
    so every step appears once. W&B keeps each launch as its own W&B run, grouped under the run folder's
    name (a W&B run's history cannot be cut back), so each of them also holds every step once.
    """

    def __init__(
        self,
        out_dir: Path,
        enabled: bool,
        step: int = 0,
        trackers: tuple[str, ...] = ("tensorboard",),
        config: dict[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb: Any = None
        self.wandb: Any = None
        if not enabled:
            return
        removed = cut_back(self.path, step)
        if removed:
            print(f"removed {removed} line(s) after step {step} from {self.path} (logged by an interrupted run)")
        if "tensorboard" in trackers:
            try:
                import tensorboard  # noqa: F401
                from torch.utils.tensorboard import SummaryWriter

                tb_dir = out_dir / "tb"
                purge = step + 1 if tb_dir.is_dir() else None  # hides the events of steps > step
                self.tb = SummaryWriter(str(tb_dir), purge_step=purge)
            except Exception:  # tensorboard is optional
                self.tb = None
        if "wandb" in trackers:
            wandb = import_wandb()
            name = out_dir.resolve().name
            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "flexitok"),
                group=name,
                name=f"{name}-from-step{step}" if step else name,
                dir=str(out_dir),
                config=config or {},
                job_type="train",
            )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
