"""Rectified-flow Euler sampler with batched classifier-free guidance."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from flexitok.sampling.decode import DecodeConfig
from flexitok.sampling.guidance import cfg_combine

VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x_t [B,...], t [B], cond [B,N,D]) -> v [B,...]


def timestep_grid(steps: int) -> list[float]:
    """The official grid: t = i / T for i = T, ..., 1 (t = 1 is pure noise)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [float(torch.tensor(i / steps, dtype=torch.float32)) for i in range(steps, 0, -1)]


def euler_sample(
    velocity: VelocityFn,
    noise: Tensor,
    cond: Tensor,
    null_cond: Tensor | None = None,
    config: DecodeConfig | None = None,
    progress: bool = False,
) -> Tensor:
    """Integrate ``dx/dt = v`` from t = 1 (``noise [B, C, h, w]``) to t = 0 with ``config.steps`` Euler steps.

    When the guidance scale at a step is not exactly 1, the conditional and unconditional velocities are
    computed in ONE batched call on ``[cond; null_cond]`` and combined with APG (``config.apg``) or plain CFG.
    ``config.guidance_scale`` may be a function of t. ``config.seed`` is not used: the noise is given.
    """
    config = config or DecodeConfig()
    guidance_scale, apg = config.guidance_scale, config.guider()
    x = noise
    b = x.shape[0]
    grid = timestep_grid(config.steps)
    dt = 1.0 / config.steps
    for t in tqdm(grid, desc="sampling", disable=not progress, leave=False):
        scale = guidance_scale(t) if callable(guidance_scale) else float(guidance_scale)
        tt = torch.full((b,), t, dtype=torch.float32, device=x.device)
        if scale == 1.0 or null_cond is None:
            v = velocity(x, tt, cond)
        else:
            if null_cond.shape[1:] == cond.shape[1:]:
                both = velocity(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, null_cond]))
                v_cond, v_uncond = both[:b], both[b:]
            else:  # a shorter null condition (official replace_with_single_token): two passes
                v_cond, v_uncond = velocity(x, tt, cond), velocity(x, tt, null_cond)
            v = apg(v_cond, v_uncond, scale) if apg is not None else cfg_combine(v_cond, v_uncond, scale)
        x = x - dt * v
    return x
