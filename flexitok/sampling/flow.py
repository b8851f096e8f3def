"""Rectified-flow samplers (Euler, Heun, midpoint) with batched classifier-free guidance.

The flow runs from t = 1 (pure noise) to t = 0 on the official grid ``t_i = i / T``. Guidance needs the
conditional and the unconditional velocity; they are computed in ONE batched call on ``[cond; null_cond]``
(2 x B rows: two *decoder passes* per image; two calls when the null condition is shorter). A guidance interval restricts guidance to evaluations with
``lo <= t <= hi``; outside it the sampler makes one conditional pass. The defaults (Euler, guidance everywhere)
are the official sampler. All settings come from one :class:`~flexitok.sampling.decode.DecodeConfig`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from flexitok.sampling.decode import SAMPLERS, DecodeConfig, Sampler
from flexitok.sampling.guidance import cfg_combine

VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x_t [B,...], t [B], cond [B,N,D]) -> v [B,...]


def timestep_grid(steps: int) -> list[float]:
    """The official grid: t = i / T for i = T, ..., 1 (t = 1 is pure noise)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [_f32(i / steps) for i in range(steps, 0, -1)]


def _f32(t: float) -> float:
    # Every evaluation time is a float32 value, as the decoder sees it (the guidance interval is tested on it).
    return float(torch.tensor(t, dtype=torch.float32))


def evaluation_times(steps: int, sampler: Sampler = "euler") -> list[float]:
    """The t of every velocity evaluation, in order. Heun corrects every step but the last (whose end point
    t = 0 it would otherwise evaluate): 2T - 1 evaluations; midpoint: 2T; Euler: T."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    grid = timestep_grid(steps)
    dt = 1.0 / steps
    times: list[float] = []
    for i, t in enumerate(grid):
        times.append(t)
        if sampler == "heun" and i < steps - 1:
            times.append(grid[i + 1])
        elif sampler == "midpoint":
            times.append(_f32(t - 0.5 * dt))
    return times


def _guided(t: float, scale: float, interval: tuple[float, float] | None) -> bool:
    return scale != 1.0 and (interval is None or interval[0] <= t <= interval[1])


def decoder_passes(config: DecodeConfig | None = None) -> int:
    """Decoder passes per image of one sampling run with ``config``: 2 per guided evaluation ([cond; uncond]),
    1 otherwise (the official 20 guided Euler steps: 40)."""
    config = config or DecodeConfig()
    total = 0
    for t in evaluation_times(config.steps, config.sampler):
        g = config.guidance_scale
        scale = g(t) if callable(g) else float(g)
        total += 2 if _guided(t, scale, config.guidance_interval) else 1
    return total


def sample_flow(
    velocity: VelocityFn,
    noise: Tensor,
    cond: Tensor,
    null_cond: Tensor | None = None,
    config: DecodeConfig | None = None,
    progress: bool = False,
) -> Tensor:
    """Integrate ``dx/dt = v`` from t = 1 (``noise [B, C, h, w]``) to t = 0 as ``config`` says.

    ``config.sampler``: ``euler`` (official), ``heun`` (trapezoidal predictor-corrector, second order) or
    ``midpoint`` (explicit midpoint, second order), over ``config.steps`` steps. At an evaluation whose guidance
    scale (``config.guidance_scale`` may be a function of t) is not exactly 1 and whose t lies in
    ``config.guidance_interval`` (all t when None), the conditional and unconditional velocities come from one
    batched call and are combined with APG (``config.apg``; its momentum buffer advances once per guided
    evaluation) or plain CFG. ``config.seed`` is not used: the noise is given.
    """
    config = config or DecodeConfig()
    steps, sampler, interval = config.steps, config.sampler, config.guidance_interval  # validated by DecodeConfig
    guidance_scale, apg = config.guidance_scale, config.guider()
    b = noise.shape[0]

    def v_at(x: Tensor, t: float) -> Tensor:
        scale = guidance_scale(t) if callable(guidance_scale) else float(guidance_scale)
        tt = torch.full((b,), t, dtype=torch.float32, device=x.device)
        if null_cond is None or not _guided(t, scale, interval):
            return velocity(x, tt, cond)
        if null_cond.shape[1:] == cond.shape[1:]:
            both = velocity(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, null_cond]))
            v_cond, v_uncond = both[:b], both[b:]
        else:  # a shorter null condition (official replace_with_single_token): two calls
            v_cond, v_uncond = velocity(x, tt, cond), velocity(x, tt, null_cond)
        return apg(v_cond, v_uncond, scale) if apg is not None else cfg_combine(v_cond, v_uncond, scale)

    x = noise
    grid = timestep_grid(steps)
    dt = 1.0 / steps
    for i, t in enumerate(tqdm(grid, desc="sampling", disable=not progress, leave=False)):
        v = v_at(x, t)
        if sampler == "heun" and i < steps - 1:
            x_pred = x - dt * v
            x = x - dt * 0.5 * (v + v_at(x_pred, grid[i + 1]))
        elif sampler == "midpoint":
            x = x - dt * v_at(x - 0.5 * dt * v, _f32(t - 0.5 * dt))
        else:
            x = x - dt * v
    return x
