"""Shared pieces of the datasets: the error type, the item type, per-index seeding."""

from __future__ import annotations

from typing import Any, TypedDict

import torch

from flexitok.errors import DatasetError

__all__ = ["DatasetError", "ImageItem", "collate_images", "index_generator"]


class ImageItem(TypedDict, total=False):
    image: torch.Tensor  # FloatTensor [3, S, S] in [-1, 1]
    label: int  # -1 when unknown
    caption: str
    skipped: int  # webdataset: samples the reader skipped since its previous item (see WebDatasetShards)


def index_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, index): reproducible per item, order-independent."""
    # Mix the two integers so neighbouring indices do not give correlated Philox streams.
    mixed = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Image items -> ``{"image": [B, 3, S, S], "label": LongTensor [B]}`` (+ ``"caption"``: list when every item
    has one), for the passes that read a dataset once (latent caches, pretokenize)."""
    out: dict[str, Any] = {
        "image": torch.stack([it["image"] for it in items]),
        "label": torch.tensor([int(it.get("label", -1)) for it in items], dtype=torch.long),
    }
    if all("caption" in it for it in items):
        out["caption"] = [str(it["caption"]) for it in items]
    return out
