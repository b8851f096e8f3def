"""The documented ranges of user-facing settings and the checks that enforce them.

One place for every entry point: the config dataclasses (:class:`flexitok.sampling.decode.DecodeConfig`,
:class:`flexitok.sampling.ar.ARSamplingConfig`) call these checks in ``__post_init__``, so the Python API, the CLI
flags, ``.ftok`` headers and the demo's requests all get the same rules and the same messages. A failed check
raises :class:`flexitok.errors.InvalidInputError` before anything is computed or written.

Ranges (docs/reliability.md lists them with their reasons):

* seeds: integers in ``0..MAX_SEED`` (2**32 - 1, what a ``.ftok`` header stores; NumPy's limit too)
* decoder steps: ``1..MAX_DECODE_STEPS``
* guidance scales (decoder and AR CFG): finite, in ``GUIDANCE_RANGE``
* AR temperature: 0 (greedy) or finite in ``[MIN_TEMPERATURE, MAX_TEMPERATURE]``
* image sides: ``1..MAX_IMAGE_SIDE`` pixels
* generation inputs (:func:`check_prompts`, :func:`check_num_samples`): prompts are non-empty strings of at most
  ``MAX_PROMPT_CHARS`` characters (a text encoder reads about 64 tokens, a few hundred characters; the rest would
  be cut off without a word); one call that returns its images (``GenerationPipeline(...)``, the demo) makes at
  most ``MAX_SAMPLES_PER_CALL``; a run that writes its images batch by batch (``GenerationPipeline.iter_batches``,
  ``flexitok generate -o FOLDER``) at most ``MAX_SAMPLES_STREAMED``; a grid image at most ``MAX_GRID_SAMPLES``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from flexitok.errors import InvalidInputError

MAX_SEED = 2**32 - 1
MAX_DECODE_STEPS = 1000
GUIDANCE_RANGE = (0.0, 100.0)
MIN_TEMPERATURE = 1e-3  # below this, logits / temperature overflows float32 for ordinary logits
MAX_TEMPERATURE = 100.0
MAX_IMAGE_SIDE = 4096
MAX_PROMPT_CHARS = 1000
MAX_SAMPLES_PER_CALL = 10_000  # every image of the call is held in memory until it returns
MAX_SAMPLES_STREAMED = 100_000  # ADM-style evaluation sets are 50,000 samples
MAX_GRID_SAMPLES = 1024  # a 32 x 32 grid


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in ``lo..hi`` (either bound may be None). Booleans and floats (even 2.0) are refused:
    a fractional count would otherwise be truncated without a word."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInputError(f"{name} must be an integer, got {_shown(value)}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        lo_s = "" if lo is None else str(lo)
        hi_s = "" if hi is None else str(hi)
        where = (
            f"in {lo_s}..{hi_s}" if lo is not None and hi is not None else f">= {lo_s}" if hi is None else f"<= {hi_s}"
        )
        raise InvalidInputError(f"{name} must be an integer {where}, got {_shown(v)}")
    return v


def check_float(
    name: str, value: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False
) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); NaN and infinities are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError(f"{name} must be a number, got {_shown(value)}")
    v = float(value)
    if not math.isfinite(v):
        raise InvalidInputError(f"{name} must be a finite number, got {v}")
    low_bad = lo is not None and (v <= lo if lo_open else v < lo)
    if low_bad or (hi is not None and v > hi):
        left = "(" if lo_open else "["
        raise InvalidInputError(f"{name} must lie in {left}{lo}, {hi}], got {v:g}")
    return v


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed: an integer in ``0..MAX_SEED``."""
    return check_int(name, value, 0, MAX_SEED)


def check_guidance(value: Any, name: str = "guidance scale") -> float:
    """A classifier-free guidance scale: finite, in :data:`GUIDANCE_RANGE` (1 disables guidance)."""
    return check_float(name, value, *GUIDANCE_RANGE)


def check_image_side(name: str, value: Any) -> int:
    """An image height or width in pixels: ``1..MAX_IMAGE_SIDE``."""
    return check_int(name, value, 1, MAX_IMAGE_SIDE)


def check_prompts(prompts: Any) -> list[str]:
    """Prompts as a list: a bare string is ONE prompt (not one per character); each must be a non-empty string
    of at most :data:`MAX_PROMPT_CHARS` characters, and there must be at least one."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise InvalidInputError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise InvalidInputError("give at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InvalidInputError(f"prompt {i} must be a string, got {_shown(p)}")
        if not p.strip():
            raise InvalidInputError(f"prompt {i} is empty")
        if len(p) > MAX_PROMPT_CHARS:
            raise InvalidInputError(f"prompt {i} is too long ({len(p)} characters; at most {MAX_PROMPT_CHARS})")
    return list(prompts)


def check_num_samples(value: Any, limit: int = MAX_SAMPLES_PER_CALL, name: str = "number of samples") -> int:
    """A number of samples: an integer in ``1..limit`` (:data:`MAX_SAMPLES_PER_CALL` unless the caller streams)."""
    return check_int(name, value, 1, limit)
