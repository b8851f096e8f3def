"""Training metrics: accumulated on the device between log steps, written to metrics.jsonl (and TensorBoard).

Losses and task logs stay tensors until a log step, so a training step never waits for the device; a
non-finite loss is remembered on the device too and checked at log and checkpoint steps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from flexitok.train.parallel import DistInfo


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
        """(mean loss per update over all processes, images/s, this process's mean task logs); resets."""
        loss_t = torch.as_tensor(self.loss_sum, dtype=torch.float32, device=info.device) / self.updates
        if info.enabled:
            dist.all_reduce(loss_t)
            loss_t /= info.world_size
        images_per_s = self.images * info.world_size / max(time.perf_counter() - self.start, 1e-9)
        logs = {k: as_float(v) / self.updates for k, v in self.logs_sum.items()}
        self.reset()
        return float(loss_t), images_per_s, logs


class MetricsLogger:
    """metrics.jsonl always; TensorBoard too when it is installed (rank 0 only)."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                import tensorboard  # noqa: F401
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
