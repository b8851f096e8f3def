"""The official (apple/ml-flextok) ``detokenize`` keywords, refused with the flexitok equivalent named.

ml-flextok's ``detokenize(tokens_list, timesteps=, guidance_scale=, perform_norm_guidance=, vae_image_sizes=,
generator=, verbose=)`` spreads the sampler settings over keywords with other defaults (a bare official call is
unguided: guidance_scale 1.0, no APG); flexitok keeps them in one :class:`flexitok.DecodeConfig` (default
guided 7.5 + APG). Accepting the official names as aliases would hide that the defaults differ, so they are
refused with the exact replacement (docs/official-checkpoints.md, "Coming from ml-flextok").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flexitok.errors import InvalidInputError

# Official keyword -> what to write instead (``{v}`` is the value given).
OFFICIAL_DETOKENIZE_KWARGS: dict[str, str] = {
    "timesteps": "decode=DecodeConfig(steps={v})",
    "guidance_scale": "decode=DecodeConfig(guidance_scale={v}) (official default 1.0 = unguided; ours 7.5)",
    "perform_norm_guidance": "decode=DecodeConfig(apg={v}) (official default False; ours True)",
    "vae_image_sizes": "image_size=<pixels>, e.g. image_size=256 for vae_image_sizes=32 with an f8 VAE "
    "(the official value is the latent grid side)",
    "verbose": "progress={v}",
    "token_ids_list": "the first positional argument (a list of [1, l] tensors is accepted as is)",
}


def check_official_kwargs(kwargs: Mapping[str, Any], method: str = "detokenize") -> None:
    """Refuse leftover keywords of ``method``: official ones with their flexitok equivalent
    (:class:`InvalidInputError`), anything else as Python would (:class:`TypeError`)."""
    if not kwargs:
        return
    unknown = [k for k in kwargs if k not in OFFICIAL_DETOKENIZE_KWARGS]
    if unknown:
        raise TypeError(f"{method}() got an unexpected keyword argument {unknown[0]!r}")
    fixes = "; ".join(f"{k}= -> {OFFICIAL_DETOKENIZE_KWARGS[k].format(v=v)}" for k, v in kwargs.items())
    raise InvalidInputError(
        f"{method}() takes flexitok keywords, not ml-flextok's: {fixes} "
        "(DecodeConfig is flexitok.DecodeConfig; see docs/official-checkpoints.md, 'Coming from ml-flextok')"
    )
