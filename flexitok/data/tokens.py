"""Token shards: FlexTok token sequences (+ label, optional caption) stored for generator training."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> Path:
    """Store token batches as a shard set.

    Each batch is ``{"tokens": LongTensor [B, N], "label": LongTensor [B] or list[int] (optional, default -1),
    "caption": list[str] (optional, all batches or none)}``. Tokens are stored as int32 (ids < 2**31).
    ``meta`` (e.g. the tokenizer name, vocab size) is kept in the index, with ``class_names`` (label i is
    ``class_names[i]``) and ``num_classes`` (defaults to ``len(class_names)``); labels must then lie in
    ``[-1, num_classes)`` (-1: unknown). Returns ``out_dir``.
    """
    info = dict(meta or {})
    # Names/count passed in ``meta`` (the 0.1.0 way) count as passed.
    names, n_classes = check_classes(
        class_names if class_names is not None else info.get("class_names"),
        num_classes if num_classes is not None else info.get("num_classes"),
    )
    info.update(class_names=names, num_classes=n_classes)
    n_tokens: int | None = None
    with ShardWriter(out_dir, TOKEN_FORMAT, shard_size, meta=info, overwrite=overwrite) as writer:
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
            if (
                n_classes is not None
                and labels.numel()
                and not (-1 <= int(labels.min()) <= int(labels.max()) < n_classes)
            ):
                raise DatasetError(f"labels must lie in [-1, {n_classes}) for {n_classes} classes")
            captions = batch.get("caption")
            writer.add(
                {"tokens": tokens.to(torch.int32), "labels": labels}, captions=list(captions) if captions else None
            )
    return Path(out_dir)


def check_classes(class_names: Sequence[str] | None, num_classes: int | None) -> tuple[list[str] | None, int | None]:
    """Validate a (class names, class count) pair; the count defaults to the number of names."""
    names: list[str] | None = None
    if class_names is not None:
        if isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names):
            raise DatasetError(f"class_names must be a list of strings, got {class_names!r:.200}")
        names = list(class_names) or None
        if names is not None and len(set(names)) != len(names):
            raise DatasetError("class_names has duplicates")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise DatasetError(f"num_classes must be a positive int, got {num_classes!r}")
    if names is not None:
        if num_classes is not None and num_classes != len(names):
            raise DatasetError(f"num_classes={num_classes} but {len(names)} class_names were given")
        return names, len(names)
    return None, num_classes


# Token ids are stored as int32 (int64 is read too); narrower or float ids are refused, never cast.
TOKEN_DTYPES = ("I32", "I64")
LABEL_DTYPES = ("I32", "I64")


def check_token_shard(fields: dict[str, tuple[str, tuple[int, ...]]], n_items: int, meta: dict[str, Any]) -> None:
    """Schema of one token shard: ``tokens`` int32/int64 ``[n, n_tokens]`` and ``labels`` int ``[n]``."""
    if set(fields) != {"tokens", "labels"}:
        raise DatasetError(f"expected the fields tokens and labels, found {sorted(fields)}")
    dtype, shape = fields["tokens"]
    if dtype not in TOKEN_DTYPES:
        raise DatasetError(f"token ids are {dtype}, expected an integer type of at least 32 bits ({TOKEN_DTYPES})")
    n_tokens = meta.get("n_tokens")
    if len(shape) != 2 or (n_tokens is not None and shape[1] != n_tokens):
        raise DatasetError(f"tokens have shape {list(shape)}, expected [{n_items}, {n_tokens}]")
    dtype, shape = fields["labels"]
    if dtype not in LABEL_DTYPES or len(shape) != 1:
        raise DatasetError(f"labels are {dtype} {list(shape)}, expected an integer vector [{n_items}]")


def _check_meta(meta: dict[str, Any]) -> None:
    for key in ("vocab_size", "n_tokens"):
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31):
            raise DatasetError(f"meta.{key} must be an integer in [1, 2**31), got {value!r}")


class TokenShardDataset(ShardDataset[TokenItem]):
    """Map-style reader of :func:`write_token_shards` output: ``{"tokens": LongTensor [N], "label": int}``
    (plus ``"caption"`` when captions were stored).

    ``meta`` always holds ``class_names`` (``list[str] | None``) and ``num_classes`` (``int | None``); sets written
    before these were recorded read as None (or ``num_classes = len(class_names)`` when only names were stored).
    """

    FORMAT = TOKEN_FORMAT

    @staticmethod
    def check_shard(fields: dict[str, tuple[str, tuple[int, ...]]], n_items: int, meta: dict[str, Any]) -> None:
        check_token_shard(fields, n_items, meta)

    def __init__(self, root: str | Path, limit: int | None = None) -> None:
        super().__init__(root, limit=limit)
        try:
            _check_meta(self.meta)
            names, n = check_classes(self.meta.get("class_names"), self.meta.get("num_classes"))
        except DatasetError as e:
            raise DatasetError(f"{self.reader.root}/index.json: {e}") from e
        self.meta["class_names"], self.meta["num_classes"] = names, n

    @property
    def class_names(self) -> list[str] | None:
        """Label i is ``class_names[i]``; None when the set records no names."""
        names = self.meta["class_names"]
        return list(names) if names is not None else None

    @property
    def num_classes(self) -> int | None:
        n = self.meta["num_classes"]
        return int(n) if n is not None else None

    def _item(self, fields: dict[str, torch.Tensor]) -> TokenItem:
        tokens, label = fields["tokens"].long(), int(fields["labels"])
        vocab = self.meta.get("vocab_size")
        if tokens.numel() and (int(tokens.min()) < 0 or (vocab is not None and int(tokens.max()) >= vocab)):
            raise DatasetError(f"token ids outside [0, {vocab}): {tokens.min()}..{tokens.max()}")
        n = self.meta["num_classes"]
        if label < -1 or (n is not None and label >= n):
            raise DatasetError(f"label {label} outside [-1, {n})")
        return {"tokens": tokens, "label": label}
