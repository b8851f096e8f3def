"""Autoregressive token sampling for any model with the :class:`ARModel` interface (e.g.
:class:`flexitok.models.generator.Generator`, which this layer does not import).

Batched decoding with an optional KV cache, temperature / top-k / top-p filtering, classifier-free guidance with
the conditional and unconditional rows in ONE batch (``[cond; uncond]``, 2B rows) and a guidance schedule over
token positions. Randomness comes only from the given ``torch.Generator`` (one for the batch, or one per row so a
sample does not depend on the batch it is in); the cached and uncached paths draw the same random numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from flexitok.errors import InvalidInputError
from flexitok.utils.limits import MAX_TEMPERATURE, MIN_TEMPERATURE, check_float, check_guidance, check_int

GuidanceScheduleKind = Literal["constant", "linear", "cosine"]
# A schedule maps (position i in [0, n), n) to the guidance scale used for token i.
GuidanceSchedule = Callable[[int, int], float]


class _TokenLimit(Protocol):
    @property
    def n_tokens(self) -> int: ...


class ARModel(Protocol):
    """What the sampler needs of an autoregressive model: the longest sequence it makes (``config.n_tokens``), the
    prefix of a condition and the null prefix for guidance (``[B, P, D]`` embeddings, ``[B, P]`` validity), a
    full forward pass and cached prefill/step decoding (logits ``[B, ..., V]``)."""

    @property
    def config(self) -> _TokenLimit: ...

    def prefix(self, condition: Any, null: Tensor | None = None) -> tuple[Tensor, Tensor]: ...

    def null_prefix(self, batch_size: int) -> tuple[Tensor, Tensor] | None: ...

    def new_cache(self, batch_size: int, max_tokens: int | None = None) -> Any: ...

    def prefill(self, prefix: Tensor, prefix_valid: Tensor, cache: Any) -> Tensor: ...

    def step(self, tokens: Tensor, cache: Any, start: int) -> Tensor: ...

    def __call__(self, tokens: Tensor, prefix: Tensor, prefix_valid: Tensor) -> Tensor: ...


@dataclass
class ARSamplingConfig:
    """Sampling options. ``temperature=0`` is greedy decoding (else 0.001..100); ``top_k=0`` and ``top_p=1``
    disable filtering; ``guidance_scale`` in [0, 100] (1 = off). Ranges: :mod:`flexitok.utils.limits`."""

    n_tokens: int | None = None  # None: as many as the generator makes
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    guidance_scale: float = 1.0
    guidance_schedule: GuidanceScheduleKind = "constant"
    use_cache: bool = True

    def __post_init__(self) -> None:
        # The shared ranges (flexitok.utils.limits), so the API, the CLI and the demo refuse the same values.
        if self.n_tokens is not None:
            self.n_tokens = check_int("n_tokens", self.n_tokens, 1)
        self.temperature = check_float("temperature", self.temperature, 0.0, MAX_TEMPERATURE)
        if 0.0 < self.temperature < MIN_TEMPERATURE:
            raise InvalidInputError(
                f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {self.temperature:g}"
            )
        self.top_k = check_int("top_k", self.top_k, 0)
        self.top_p = check_float("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        self.guidance_scale = check_guidance(self.guidance_scale, "generator guidance (CFG) scale")
        if self.guidance_schedule not in ("constant", "linear", "cosine"):
            raise InvalidInputError(f"unknown guidance schedule {self.guidance_schedule!r}")
        if not isinstance(self.use_cache, bool):
            raise InvalidInputError(f"use_cache must be True or False, got {self.use_cache!r}")


def guidance_schedule(kind: GuidanceScheduleKind, scale: float) -> GuidanceSchedule:
    """Guidance scale as a function of the token position.

    ``constant``: ``scale`` everywhere. ``linear`` / ``cosine``: ramp from 1 (no guidance) at the first token to
    ``scale`` at the last, so the coarse early tokens stay diverse and later ones follow the condition.
    """
    if kind == "constant":
        return lambda i, n: scale
    if kind == "linear":
        return lambda i, n: 1.0 + (scale - 1.0) * (i / max(n - 1, 1))
    if kind == "cosine":
        return lambda i, n: 1.0 + (scale - 1.0) * 0.5 * (1.0 - math.cos(math.pi * i / max(n - 1, 1)))
    raise InvalidInputError(f"unknown guidance schedule {kind!r}; expected 'constant', 'linear' or 'cosine'")


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits per row, set the rest to -inf. [B, V] -> [B, V]; k <= 0 keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability sums to >= p.

    [B, V] -> [B, V]; the most likely token is always kept; p >= 1 keeps all.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    # A token is dropped when the mass of the strictly more likely tokens already reaches p.
    drop_sorted = (probs.cumsum(-1) - probs) >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Tensor:
    """Draw one token per row. logits [B, V] -> LongTensor [B]. temperature 0 = argmax."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = top_p_filter(top_k_filter(logits.float() / temperature, top_k), top_p)
    probs = logits.softmax(-1)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    if len(generator) != probs.shape[0]:
        raise InvalidInputError(f"{len(generator)} generators for a batch of {probs.shape[0]}")
    return torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=g) for i, g in enumerate(generator)]).view(-1)


def cfg_batch(prefix: Tensor, valid: Tensor, null_prefix: Tensor, null_valid: Tensor) -> tuple[Tensor, Tensor]:
    """Stack conditional and unconditional prefixes into one batch: ([2B, P, D], [2B, P]); rows B.. are uncond."""
    if prefix.shape != null_prefix.shape:
        raise InvalidInputError(f"prefix {tuple(prefix.shape)} and null prefix {tuple(null_prefix.shape)} differ")
    return torch.cat([prefix, null_prefix]), torch.cat([valid, null_valid])


def guide(logits: Tensor, scale: float) -> Tensor:
    """Combine [cond; uncond] logits [2B, V] into guided logits [B, V]: u + scale * (c - u)."""
    cond, uncond = logits.chunk(2)
    return uncond + scale * (cond - uncond)


@torch.no_grad()
def sample_tokens(
    model: ARModel,
    prefix: Tensor,
    prefix_valid: Tensor,
    cfg: ARSamplingConfig,
    null_prefix: tuple[Tensor, Tensor] | None = None,
    schedule: GuidanceSchedule | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Tensor:
    """Sample ``cfg.n_tokens`` tokens (default: the generator's ``n_tokens``) after a prefix [B, P, D]
    (valid [B, P]) -> LongTensor [B, n_tokens].

    Guidance is used when ``null_prefix`` is given and the scale is not 1 everywhere. ``schedule`` overrides
    ``cfg.guidance_schedule`` (any callable (i, n) -> scale).
    """
    n = cfg.n_tokens if cfg.n_tokens is not None else model.config.n_tokens
    if n > model.config.n_tokens:
        raise InvalidInputError(f"asked for {n} tokens; the generator was built for at most {model.config.n_tokens}")
    sched = schedule if schedule is not None else guidance_schedule(cfg.guidance_schedule, cfg.guidance_scale)
    scales = [float(sched(i, n)) for i in range(n)]
    use_cfg = null_prefix is not None and any(s != 1.0 for s in scales)
    b = prefix.shape[0]
    if use_cfg:
        assert null_prefix is not None
        prefix, prefix_valid = cfg_batch(prefix, prefix_valid, *null_prefix)

    def pick(logits: Tensor, i: int) -> Tensor:
        if use_cfg:
            logits = guide(logits, scales[i])
        return sample_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, generator)

    out = torch.empty(b, 0, dtype=torch.long, device=prefix.device)
    rows = 2 * b if use_cfg else b
    p_len = prefix.shape[1]
    if cfg.use_cache:
        cache = model.new_cache(rows, n)
        logits = model.prefill(prefix, prefix_valid, cache)
        for i in range(n):
            nxt = pick(logits, i)
            out = torch.cat([out, nxt[:, None]], dim=1)
            if i + 1 < n:
                feed = torch.cat([nxt, nxt]) if use_cfg else nxt
                logits = model.step(feed[:, None], cache, p_len + i)[:, -1]
        return out
    for i in range(n):
        seq = torch.cat([out, out]) if use_cfg else out
        logits = model(seq, prefix, prefix_valid)[:, -1]
        out = torch.cat([out, pick(logits, i)[:, None]], dim=1)
    return out


def generate(
    model: ARModel,
    cfg: ARSamplingConfig,
    condition: Any,
    schedule: GuidanceSchedule | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Tensor:
    """Sample token sequences for a condition (``ClassLabels [B]``, ``TextFeatures [B, L, Dt]`` or
    ``Unconditional(B)``, see :mod:`flexitok.models.conditioning`). -> LongTensor [B, cfg.n_tokens]."""
    prefix, valid = model.prefix(condition)
    null = model.null_prefix(prefix.shape[0])
    return sample_tokens(model, prefix, valid, cfg, null, schedule, generator)
