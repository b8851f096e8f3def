"""What callers give a generator, turned into its condition: class names or ids typed by a user, the labels and
captions of a dataset (generation evaluation), stand-ins for benchmarks. The generator's condition embedder
(:mod:`flexitok.models.conditioning`) only reads condition values; this module produces them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from flexitok.errors import InvalidInputError
from flexitok.models.conditioning import (
    ClassEmbedder,
    ClassLabels,
    Condition,
    ConditionEmbedder,
    TextEmbedder,
    TextFeatures,
    Unconditional,
)

# How many class names an error message lists before "...".
SHOWN_NAMES = 8


def _valid_classes(embedder: ClassEmbedder) -> str:
    n = embedder.num_classes
    if not embedder.names:
        return f"class ids are 0..{n - 1}"
    shown = ", ".join(embedder.names[:SHOWN_NAMES]) + (", ..." if n > SHOWN_NAMES else "")
    return f"classes are ids 0..{n - 1} or names ({shown})"


def parse_classes(text: str, embedder: ConditionEmbedder) -> list[int]:
    """``"3"`` / ``"3,7"`` / ``"sneaker,bag"`` -> class ids of a class-conditioned generator (names are matched
    case-insensitively). An unknown name or an id outside ``0..num_classes-1`` raises :class:`InvalidInputError`
    saying which classes exist."""
    if not isinstance(embedder, ClassEmbedder):
        raise embedder.wrong_input()
    by_name = {name.lower(): i for i, name in enumerate(embedder.names or ())}
    ids = []
    for part in (s.strip() for s in text.split(",") if s.strip()):
        if part.lower() in by_name:  # before digits: a dataset may name its classes "0", "1", ...
            i = by_name[part.lower()]
        elif part.lstrip("-").isdigit():
            i = int(part)
            if not 0 <= i < embedder.num_classes:
                raise InvalidInputError(f"class {i} is outside this generator's classes: {_valid_classes(embedder)}")
        else:
            raise InvalidInputError(f"unknown class {part[:60]!r}: this generator's {_valid_classes(embedder)}")
        ids.append(i)
    if not ids:
        raise InvalidInputError("give at least one class (an id or a name)")
    return ids


def _known_labels(labels: Tensor | None, n: int) -> Tensor | None:
    """The first n labels when all n are known (>= 0), else None."""
    if labels is None or len(labels) < n or not bool((labels[:n] >= 0).all()):
        return None
    return labels[:n]


def dataset_inputs(
    embedder: ConditionEmbedder, n: int, labels: Tensor | None = None, captions: Sequence[str] | None = None
) -> tuple[dict[str, Any], Tensor | None]:
    """For ``n`` samples prompted like a dataset with these ``labels`` and ``captions`` (either may be missing):
    the keyword inputs of :class:`~flexitok.pipelines.GenerationPipeline`, and the class each sample should show
    (``LongTensor [n]``, or None when unknown), for the generation evaluation."""
    if isinstance(embedder, ClassEmbedder):
        # The dataset's own labels when it has them (so an FD compares like with like), else a balanced cycle.
        ids = _known_labels(labels, n)
        ids = ids if ids is not None else torch.arange(n) % embedder.num_classes
        return {"labels": ids}, ids
    if isinstance(embedder, TextEmbedder):
        if not captions:
            raise InvalidInputError("a text-conditioned generator needs prompts: the dataset has no captions")
        # Captions describe their image's class: the samples should show it.
        return {"prompts": [captions[i % len(captions)] for i in range(n)]}, _known_labels(labels, n)
    return {"num_samples": n}, None


def placeholder_condition(embedder: ConditionEmbedder, batch_size: int) -> Condition:
    """A stand-in condition of the right shape (benchmarks of random-weight generators)."""
    if isinstance(embedder, ClassEmbedder):
        return ClassLabels(torch.arange(batch_size) % embedder.num_classes)
    if isinstance(embedder, TextEmbedder):
        return TextFeatures(torch.randn(batch_size, 8, embedder.text_dim))
    return Unconditional(batch_size)
