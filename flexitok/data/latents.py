"""Pre-computed VAE latents: write a dataset through an encoder once, then train on the cached latents."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from flexitok.data.base import DatasetError, collate_images
from flexitok.data.shards import ShardDataset, ShardWriter

LATENT_FORMAT = "flexitok-latents"

Encoder = Callable[[torch.Tensor], torch.Tensor]


class LatentItem(TypedDict, total=False):
    latents: torch.Tensor  # [C, h, w]
    label: int
    caption: str


def _encode_fn(encoder: Encoder | nn.Module) -> Encoder:
    # Accept a VAE module (its .encode) or any callable images -> latents.
    encode = getattr(encoder, "encode", None)
    return encode if callable(encode) else encoder


@torch.no_grad()
def write_latent_cache(
    model_vae: Encoder | nn.Module,
    dataset: Dataset,
    out_dir: str | Path,
    batch_size: int = 64,
    shard_size: int = 4096,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    overwrite: bool = False,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Encode every ``dataset`` image (``images [B,3,H,W] -> latents [B,C,h,w]``) into a latent shard set.

    ``model_vae`` is a VAE module (``.encode`` is used) or any callable. Labels (and captions when every item
    has one) are stored next to the latents. Returns ``out_dir``; it only appears once everything is written.
    """
    encode = _encode_fn(model_vae)
    if device is None:
        params = list(model_vae.parameters()) if isinstance(model_vae, nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_images
    )
    shape: list[int] | None = None
    info = {"dtype": str(dtype).removeprefix("torch."), **(meta or {})}
    with ShardWriter(out_dir, LATENT_FORMAT, shard_size, meta=info, overwrite=overwrite) as writer:
        for batch in tqdm(loader, desc="encoding latents", unit="batch"):
            latents = encode(batch["image"].to(device))
            if latents.ndim != 4 or latents.shape[0] != batch["image"].shape[0]:
                raise DatasetError(f"encoder returned shape {tuple(latents.shape)}, expected [B, C, h, w]")
            if shape is None:
                shape = list(latents.shape[1:])
                writer.meta["shape"] = shape
            writer.add({"latents": latents.to(dtype), "labels": batch["label"]}, captions=batch.get("caption"))
    return Path(out_dir)


def check_latent_shard(fields: dict[str, tuple[str, tuple[int, ...]]], n_items: int, meta: dict[str, Any]) -> None:
    """Schema of one latent shard: float ``latents [n, *meta.shape]`` and integer ``labels [n]``."""
    if set(fields) != {"latents", "labels"}:
        raise DatasetError(f"expected the fields latents and labels, found {sorted(fields)}")
    dtype, shape = fields["latents"]
    if dtype not in ("F32", "F16", "BF16", "F64"):
        raise DatasetError(f"latents are {dtype}, expected a float type")
    if len(shape) != 4 or ("shape" in meta and list(shape[1:]) != meta["shape"]):
        raise DatasetError(f"latents have shape {list(shape)}, expected [{n_items}, *{meta.get('shape', 'C, h, w')}]")
    dtype, shape = fields["labels"]
    if dtype not in ("I32", "I64") or len(shape) != 1:
        raise DatasetError(f"labels are {dtype} {list(shape)}, expected an integer vector [{n_items}]")


class LatentCacheDataset(ShardDataset[LatentItem]):
    """Map-style reader of :func:`write_latent_cache` output: ``{"latents": [C,h,w] float32, "label": int}``
    (plus ``"caption"`` when captions were stored)."""

    FORMAT = LATENT_FORMAT

    @staticmethod
    def check_shard(fields: dict[str, tuple[str, tuple[int, ...]]], n_items: int, meta: dict[str, Any]) -> None:
        check_latent_shard(fields, n_items, meta)

    def _item(self, fields: dict[str, torch.Tensor]) -> LatentItem:
        return {"latents": fields["latents"].float(), "label": int(fields["labels"])}
