"""Token shards: FlexTok token sequences (+ label, optional caption) stored for generator training."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypedDict

import torch

from flexitok.data.base import DatasetError
from flexitok.data.shards import ShardDataset, ShardWriter

TOKEN_FORMAT = "flexitok-tokens"


class TokenItem(TypedDict, total=False):
    tokens: torch.Tensor  # LongTensor [N]
    label: int
    caption: str


def write_token_shards(
    batches: Iterable[dict[str, Any]],
    out_dir: str | Path,
    shard_size: int = 65536,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Store token batches as a shard set.

    Each batch is ``{"tokens": LongTensor [B, N], "label": LongTensor [B] or list[int] (optional, default -1),
    "caption": list[str] (optional, all batches or none)}``. Tokens are stored as int32 (ids < 2**31).
    ``meta`` (e.g. the tokenizer name, vocab size) is kept in the index. Returns ``out_dir``.
    """
    n_tokens: int | None = None
    with ShardWriter(out_dir, TOKEN_FORMAT, shard_size, meta=meta, overwrite=overwrite) as writer:
        for batch in batches:
            tokens = torch.as_tensor(batch["tokens"])
            if tokens.ndim != 2 or tokens.dtype.is_floating_point:
                raise DatasetError(f"tokens must be an integer tensor [B, N], got {tuple(tokens.shape)} {tokens.dtype}")
            if n_tokens is None:
                n_tokens = int(tokens.shape[1])
                writer.meta["n_tokens"] = n_tokens
            elif tokens.shape[1] != n_tokens:
                raise DatasetError(f"token length changed from {n_tokens} to {tokens.shape[1]} between batches")
            if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= 2**31):
                raise DatasetError("token ids must lie in [0, 2**31)")
            b = tokens.shape[0]
            label = batch.get("label")
            labels = torch.full((b,), -1, dtype=torch.long) if label is None else torch.as_tensor(label).long()
            if labels.shape != (b,):
                raise DatasetError(f"labels must have shape [{b}], got {tuple(labels.shape)}")
            captions = batch.get("caption")
            writer.add(
                {"tokens": tokens.to(torch.int32), "labels": labels}, captions=list(captions) if captions else None
            )
    return Path(out_dir)


class TokenShardDataset(ShardDataset[TokenItem]):
    """Map-style reader of :func:`write_token_shards` output: ``{"tokens": LongTensor [N], "label": int}``
    (plus ``"caption"`` when captions were stored)."""

    FORMAT = TOKEN_FORMAT

    def _item(self, fields: dict[str, torch.Tensor]) -> TokenItem:
        return {"tokens": fields["tokens"].long(), "label": int(fields["labels"])}
