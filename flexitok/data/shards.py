"""Safetensors shard sets with a JSON index: the storage format behind the latent cache and token shards.

Layout of a shard set folder::

    index.json                       {"format", "version", "num_items", "shards": [{"file", "num_items"}], "meta"}
    shard-000000.safetensors         one tensor per field, first dim = items; captions in the metadata

The folder is built under a temporary sibling and renamed into place at the end, so readers never see a
half-written set.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from bisect import bisect_right
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from flexitok.data.base import DatasetError
from flexitok.io.checkpoint import replace_dir

INDEX_FILE = "index.json"
INDEX_VERSION = 1


class ShardWriter:
    """Buffer per-item fields and flush them to ``shard-XXXXXX.safetensors`` files every ``shard_size`` items.

    Use as a context manager; the set only appears at ``out_dir`` when the block exits without an error.
    Tensor fields must keep the same per-item shape and dtype across calls; ``captions`` are optional strings.
    """

    def __init__(
        self,
        out_dir: str | Path,
        fmt: str,
        shard_size: int,
        meta: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        if shard_size < 1:
            raise DatasetError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and any(self.out_dir.iterdir()) and not overwrite:
            raise DatasetError(f"output folder {self.out_dir} exists and is not empty (pass overwrite=True)")
        self.fmt = fmt
        self.shard_size = shard_size
        self.meta = dict(meta or {})
        self._buffers: dict[str, list[torch.Tensor]] = {}
        self._captions: list[str] | None = None
        self._buffered = 0
        self._shards: list[dict[str, Any]] = []
        self._num_items = 0
        self._tmp: Path | None = None
        self.overwrite = overwrite

    def __enter__(self) -> ShardWriter:
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(dir=self.out_dir.parent, prefix=f".{self.out_dir.name}.tmp-"))
        return self

    def add(self, fields: dict[str, torch.Tensor], captions: list[str] | None = None) -> None:
        """Append a batch: every tensor in ``fields`` is ``[B, ...]`` with the same B."""
        sizes = {int(t.shape[0]) for t in fields.values()}
        if len(sizes) != 1:
            raise DatasetError(f"fields disagree on batch size: { {k: tuple(v.shape) for k, v in fields.items()} }")
        b = sizes.pop()
        if captions is not None and len(captions) != b:
            raise DatasetError(f"got {len(captions)} captions for a batch of {b}")
        if self._num_items == 0 and self._buffered == 0:
            self._captions = [] if captions is not None else None
        elif (captions is None) != (self._captions is None):
            raise DatasetError("captions must be given for every batch or for none")
        start = 0
        while start < b:
            take = min(b - start, self.shard_size - self._buffered)
            for name, tensor in fields.items():
                self._buffers.setdefault(name, []).append(tensor[start : start + take].detach().cpu().contiguous())
            if self._captions is not None and captions is not None:
                self._captions.extend(captions[start : start + take])
            self._buffered += take
            start += take
            if self._buffered == self.shard_size:
                self._flush()

    def _flush(self) -> None:
        if self._buffered == 0:
            return
        assert self._tmp is not None, "use ShardWriter as a context manager"
        name = f"shard-{len(self._shards):06d}.safetensors"
        tensors = {k: torch.cat(v).contiguous() for k, v in self._buffers.items()}
        metadata = {"format": self.fmt}
        if self._captions is not None:
            metadata["captions"] = json.dumps(self._captions)
        save_file(tensors, str(self._tmp / name), metadata=metadata)
        self._shards.append({"file": name, "num_items": self._buffered})
        self._num_items += self._buffered
        self._buffers = {}
        self._captions = [] if self._captions is not None else None
        self._buffered = 0

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._tmp is not None
        if exc_type is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            return
        try:
            self._flush()
            if self._num_items == 0:
                raise DatasetError("nothing to write: the input produced no items")
            index = {
                "format": self.fmt,
                "version": INDEX_VERSION,
                "num_items": self._num_items,
                "shards": self._shards,
                "meta": self.meta,
            }
            (self._tmp / INDEX_FILE).write_text(json.dumps(index, indent=2))
            # An existing folder is only replaced when overwrite=True or it is empty.
            replace_dir(self._tmp, self.out_dir)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise


class ShardReader:
    """Random access to items of a shard set. File handles open lazily per process (safe with DataLoader fork)."""

    def __init__(self, root: str | Path, fmt: str) -> None:
        self.root = Path(root)
        index_path = self.root / INDEX_FILE
        if not index_path.is_file():
            raise DatasetError(f"{self.root} is not a {fmt} folder: {INDEX_FILE} is missing")
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{index_path} is not valid JSON: {e}") from e
        if index.get("format") != fmt:
            raise DatasetError(f"{self.root} holds {index.get('format')!r} data, expected {fmt!r}")
        if index.get("version") != INDEX_VERSION:
            raise DatasetError(f"{index_path} has version {index.get('version')}, this flexitok reads {INDEX_VERSION}")
        self.meta: dict[str, Any] = index.get("meta", {})
        self.shard_files = [self.root / s["file"] for s in index["shards"]]
        missing = [str(p) for p in self.shard_files if not p.is_file()]
        if missing:
            raise DatasetError(f"shard file(s) missing from {self.root}: {', '.join(missing[:5])}")
        self.offsets = [0]
        for s in index["shards"]:
            self.offsets.append(self.offsets[-1] + int(s["num_items"]))
        self.num_items = self.offsets[-1]
        self._handles: dict[int, Any] = {}
        self._captions: dict[int, list[str] | None] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_captions"] = {}
        return state

    def __len__(self) -> int:
        return self.num_items

    def _handle(self, shard: int) -> Any:
        if shard not in self._handles:
            handle = safe_open(str(self.shard_files[shard]), framework="pt")
            self._handles[shard] = handle
            captions = (handle.metadata() or {}).get("captions")
            self._captions[shard] = json.loads(captions) if captions is not None else None
        return self._handles[shard]

    def get(self, index: int) -> tuple[dict[str, torch.Tensor], str | None]:
        """Fields of item ``index`` (tensors without the item dim) and its caption (None when absent)."""
        if not -self.num_items <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} items")
        index %= self.num_items
        shard = bisect_right(self.offsets, index) - 1
        local = index - self.offsets[shard]
        handle = self._handle(shard)
        fields = {name: handle.get_slice(name)[local : local + 1][0] for name in handle.keys()}
        captions = self._captions[shard]
        return fields, (captions[local] if captions is not None else None)


ItemT = TypeVar("ItemT")


class ShardDataset(Dataset, Generic[ItemT]):
    """Map-style dataset over a :class:`ShardReader` folder of format ``FORMAT``.

    Subclasses turn one item's stored fields into the dataset item (:meth:`_item`); the caption, when captions were
    stored, is added as ``"caption"``. ``limit`` keeps only the first ``limit`` items.
    """

    FORMAT: ClassVar[str]

    def __init__(self, root: str | Path, limit: int | None = None) -> None:
        self.reader = ShardReader(root, self.FORMAT)
        self.meta = self.reader.meta
        self.num_items = len(self.reader) if limit is None else min(limit, len(self.reader))

    def __len__(self) -> int:
        return self.num_items

    def _item(self, fields: dict[str, torch.Tensor]) -> ItemT:
        raise NotImplementedError

    def __getitem__(self, index: int) -> ItemT:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        fields, caption = self.reader.get(index % len(self))
        item = self._item(fields)
        if caption is not None:
            item["caption"] = caption  # type: ignore[index]
        return item
