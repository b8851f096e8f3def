"""Exponential moving average of a module's parameters (buffers are copied, not averaged)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``shadow = decay * shadow + (1 - decay) * param`` for every floating-point parameter.

    The shadow lives in fp32 on the parameter's device, independent of the training precision, so a bf16
    autocast run still averages full-precision weights. Buffers (e.g. BatchNorm statistics) are copied as-is.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().float().clone() for name, p in model.named_parameters() if p.is_floating_point()
        }

    def decay_at(self, step: int | None) -> float:
        """``min(decay, (1 + step) / (10 + step))`` when warm-up is on and ``step`` is given: early averages
        forget the random init quickly instead of keeping ``decay ** step`` of it."""
        if step is None or not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        decay = self.decay_at(step)
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters with the EMA weights (cast to each parameter's dtype)."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` carrying the EMA weights (for evaluation and export)."""
        out = copy.deepcopy(model)
        self.copy_to(out)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        unexpected = set(state) - set(self.shadow)
        if missing or unexpected:
            raise KeyError(f"EMA state mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        for name, t in state.items():
            self.shadow[name].copy_(t)
