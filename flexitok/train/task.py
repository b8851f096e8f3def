"""What a training run is about: the :class:`TrainTask` base class (model + loss) and the optimizers it adds.

The trainer owns the loop (data, optimisation, precision, parallelism, checkpoints); a task owns the model and
says how a batch turns into a loss. Every hook has a no-op default, so a task overrides only what it needs::

    class MyTask(TrainTask):
        def loss(self, batch, step):
            loss = F.mse_loss(self.model(batch["x"]), batch["y"])
            return loss, {"mse": loss.detach()}   # log values stay tensors: no host sync per step
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

# A loss function of one micro-batch: ``(batch, step) -> (scalar loss or None when inactive, logs)``.
LossFn = Callable[[Any, int], tuple[Tensor | None, dict[str, Any]]]


@dataclass
class ExtraOptimizer:
    """A module trained by its own optimizer on its own loss (e.g. a GAN discriminator).

    Per update the trainer zeroes its gradients, accumulates ``loss(batch, step) / grad_accum`` over the
    update's micro-batches, averages the gradients over processes and steps ``optimizer`` once, *before* the
    main loss of the same micro-batches is computed; ``loss`` returning ``None`` skips the update (warm-up).
    The loss runs under a fork of the torch RNG, so it sees the same random draws as the main loss of the same
    micro-batch (a discriminator is trained on exactly the fakes the generator is then scored on). ``module``
    and the optimizer state are checkpointed as ``<name>.safetensors`` / ``optimizer_<name>.pt``.
    """

    name: str
    module: nn.Module
    optimizer: torch.optim.Optimizer
    loss: LossFn


class TrainTask:
    """Base class of every training task. Subclasses set ``self.model`` and implement :meth:`loss`.

    Attributes:
        model: the trained (and EMA'd, evaluated, exported) module.
        aux_modules: further modules trained by the main optimizer and checkpointed with the model, but neither
            EMA'd nor exported (e.g. a REPA projector).
        frozen_modules: helper networks the trainer moves to the device and keeps in eval mode, never trained
            nor checkpointed (e.g. a REPA target encoder, a perceptual-loss network).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.aux_modules = nn.ModuleDict()
        self.frozen_modules = nn.ModuleDict()

    def loss(self, batch: Any, step: int) -> tuple[Tensor, dict[str, Any]]:
        """Scalar loss of one per-process micro-batch, and 0-d tensors (or floats) to log."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss(batch, step)")

    def extra_optimizers(self) -> list[ExtraOptimizer]:
        """Modules with their own optimizer and loss, stepped once per update (default: none)."""
        return []

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        """Periodic evaluation on rank 0 with the (EMA) model; returns metrics to log (default: none)."""
        return {}

    def export(self, model: nn.Module, out_dir: Path) -> None:
        """Write the final artefact from the (EMA) model on rank 0 at the end of training (default: nothing)."""

    def extra_state(self) -> dict[str, Any]:
        """Task-owned state to checkpoint besides modules and optimizers (default: none)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned (default: nothing to restore)."""
