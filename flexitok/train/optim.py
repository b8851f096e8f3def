"""AdamW parameter groups and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from flexitok.train.trainer_config import TrainerConfig

_NO_DECAY_HINTS = ("token", "emb", "null", "register", "pos")


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on 1-D tensors (norms, biases) and learned embeddings / tokens."""
    embedding_params = {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        is_embedding = id(p) in embedding_params or (
            leaf not in ("weight", "bias") and any(h in leaf for h in _NO_DECAY_HINTS)
        )
        (no_decay if p.ndim < 2 or is_embedding else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def lr_lambda(cfg: TrainerConfig) -> Callable[[int], float]:
    """Multiplier of ``cfg.lr`` for update ``step`` (0-based): linear warm-up, then cosine down to ``min_lr``."""

    def f(step: int) -> float:
        if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, max(0.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)))
        lr = cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return lr / cfg.lr

    return f


def build_optimizer(
    module: nn.Module, cfg: TrainerConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over ``module``'s trainable parameters and its per-update schedule."""
    optimizer = torch.optim.AdamW(param_groups(module, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))


# Optimizer settings the config sets per parameter group and a checkpoint restore would overwrite.
_GROUP_SETTINGS = ("betas", "weight_decay")


def group_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The per-group settings the optimizer was built with (take it before restoring a checkpoint)."""
    return [{k: g[k] for k in _GROUP_SETTINGS if k in g} for g in optimizer.param_groups]


def apply_config(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    configured: list[dict[str, Any]],
    cfg: TrainerConfig,
) -> list[str]:
    """After a checkpoint restore: make the optimizer and schedule follow ``cfg`` (``--allow-config-change``).

    A restore brings back the saved base lr (``scheduler.base_lrs``), betas and weight decay; this sets them to
    the configured ones (``configured``: :func:`group_settings` before the restore) and the current lr of every
    group to the schedule of ``cfg`` at the restored step, so the next update already uses the new values.
    Returns what changed, e.g. ``["train.lr: 0.0001 -> 0.01"]``; with an unchanged config nothing is touched
    (resume stays bit-identical).
    """
    changed: list[str] = []
    old_base = list(scheduler.base_lrs)
    if any(b != cfg.lr for b in old_base):
        changed.append(f"train.lr: {old_base[0]:g} -> {cfg.lr:g}")
        scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
        for g in optimizer.param_groups:
            g["initial_lr"] = cfg.lr
    for group, settings in zip(optimizer.param_groups, configured, strict=True):
        for key, value in settings.items():
            if group.get(key) != value:
                if not any(c.startswith(f"train.{key}:") for c in changed):
                    changed.append(f"train.{key}: {group.get(key)} -> {value}")
                group[key] = value
    f, step = lr_lambda(cfg), scheduler.last_epoch
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        lr = base * f(step)  # what LambdaLR computes, so an unchanged schedule gives the same float
        if group["lr"] != lr:
            group["lr"] = lr
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    return changed
