"""The one description of how the flow decoder turns tokens into pixels: :class:`DecodeConfig`.

Every place that decodes takes one: ``FlexTok.detokenize``, ``.ftok`` headers, the demo, the benchmarks, the
evaluations, the tokenizer task's periodic evaluation, the generation pipeline and the CLI flags
(``flexitok.cli.common.add_decode_args``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from flexitok.errors import InvalidInputError
from flexitok.sampling.guidance import APG, GuidanceScale
from flexitok.utils.limits import MAX_DECODE_STEPS, check_guidance, check_int, check_seed

Sampler = Literal["euler", "heun", "midpoint"]
SAMPLERS: tuple[str, ...] = ("euler", "heun", "midpoint")


@dataclass(frozen=True)
class DecodeConfig:
    """Decoder sampling settings; together with the tokens they fix the decoded image.

    ``steps``: Euler steps from t = 1 (noise) to t = 0, 1..1000. ``guidance_scale``: classifier-free guidance
    scale, a finite number in [0, 100] or a schedule ``t -> scale``; 1 disables guidance (one conditional pass
    per step). ``apg``: adaptive projected guidance (official defaults) instead of plain CFG. ``seed``: seed of a CPU ``torch.Generator``
    from which the initial noise is drawn one image at a time, when the caller gives neither noise nor a
    generator (so every device and batch size agree); 0..2**32 - 1. The ranges are :mod:`flexitok.utils.limits`.

    Fewer decoder passes (defaults: the official sampler; see docs/performance.md for the trade-offs):
    ``sampler``: ``euler`` (official), ``heun`` or ``midpoint`` (second order: 2T - 1 and 2T velocity
    evaluations for T steps). ``guidance_interval=(lo, hi)``: guidance only at evaluations with
    ``lo <= t <= hi``, one conditional pass elsewhere (None: guidance everywhere).
    """

    steps: int = 20
    guidance_scale: GuidanceScale = 7.5
    apg: bool = True
    seed: int = 0
    sampler: Sampler = "euler"
    guidance_interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        # The shared ranges (flexitok.utils.limits): every entry point (API, CLI, .ftok, demo) builds one of these.
        object.__setattr__(self, "steps", check_int("decoder steps", self.steps, 1, MAX_DECODE_STEPS))
        if not callable(self.guidance_scale):
            object.__setattr__(self, "guidance_scale", check_guidance(self.guidance_scale, "decoder guidance scale"))
        if not isinstance(self.apg, bool):
            raise InvalidInputError(f"apg must be True or False, got {self.apg!r}")
        object.__setattr__(self, "seed", check_seed(self.seed, "decoder seed"))
        if self.sampler not in SAMPLERS:
            raise InvalidInputError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.guidance_interval is not None:
            gi = self.guidance_interval
            try:
                lo, hi = (float(v) for v in gi)
            except (TypeError, ValueError):
                raise InvalidInputError(f"guidance_interval must be two numbers (lo, hi), got {gi!r}") from None
            if not 0.0 <= lo <= hi <= 1.0:
                raise InvalidInputError(f"guidance_interval must satisfy 0 <= lo <= hi <= 1, got {gi!r}")
            object.__setattr__(self, "guidance_interval", (lo, hi))

    @property
    def official(self) -> bool:
        """True when the sampler is the official one (Euler, guidance at every step)."""
        return self.sampler == "euler" and self.guidance_interval is None

    def guider(self) -> APG | None:
        """A fresh APG (its momentum buffer lives for one sampling run), or None for plain CFG."""
        return APG() if self.apg else None

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with :attr:`seed`."""
        return torch.Generator().manual_seed(self.seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (a guidance schedule is not serialisable and is refused). The sampler options appear
        only when they differ from the official sampler, so official-sampler records stay as they were."""
        if callable(self.guidance_scale):
            raise InvalidInputError("a guidance schedule (a function of t) cannot be written to a file")
        d = asdict(self)
        if d["sampler"] == "euler":
            del d["sampler"]
        if d["guidance_interval"] is None:
            del d["guidance_interval"]
        else:
            d["guidance_interval"] = list(d["guidance_interval"])
        return d
