"""The one description of how the flow decoder turns tokens into pixels: :class:`DecodeConfig`.

Every place that decodes takes one: ``FlexTok.detokenize``, ``.ftok`` headers, the demo, the benchmarks, the
evaluations, the tokenizer task's periodic evaluation, the generation pipeline and the CLI flags
(``flexitok.cli.common.add_decode_args``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from flexitok.errors import InvalidInputError
from flexitok.sampling.guidance import APG, GuidanceScale


@dataclass(frozen=True)
class DecodeConfig:
    """Decoder sampling settings; together with the tokens they fix the decoded image.

    ``steps``: Euler steps from t = 1 (noise) to t = 0. ``guidance_scale``: classifier-free guidance scale, a
    number or a schedule ``t -> scale``; 1 disables guidance (one conditional pass per step). ``apg``: adaptive
    projected guidance (official defaults) instead of plain CFG. ``seed``: seed of a CPU ``torch.Generator``
    from which the initial noise is drawn one image at a time, when the caller gives neither noise nor a
    generator (so every device and batch size agree).
    """

    steps: int = 20
    guidance_scale: GuidanceScale = 7.5
    apg: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise InvalidInputError(f"decoder steps must be an integer >= 1, got {self.steps!r}")
        if not callable(self.guidance_scale):
            if isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, (int, float)):
                raise InvalidInputError(
                    f"guidance_scale must be a number or a function of t, got {self.guidance_scale!r}"
                )
            if not math.isfinite(self.guidance_scale):
                raise InvalidInputError(f"guidance_scale must be finite, got {self.guidance_scale}")
            object.__setattr__(self, "guidance_scale", float(self.guidance_scale))
        if not isinstance(self.apg, bool):
            raise InvalidInputError(f"apg must be True or False, got {self.apg!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InvalidInputError(f"seed must be an integer, got {self.seed!r}")

    def guider(self) -> APG | None:
        """A fresh APG (its momentum buffer lives for one sampling run), or None for plain CFG."""
        return APG() if self.apg else None

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with :attr:`seed`."""
        return torch.Generator().manual_seed(self.seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (a guidance schedule is not serialisable and is refused)."""
        if callable(self.guidance_scale):
            raise InvalidInputError("a guidance schedule (a function of t) cannot be written to a file")
        return asdict(self)
