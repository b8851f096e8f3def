"""Safetensors shard sets with a JSON index: the storage format behind the latent cache and token shards.

Layout of a shard set folder::

    index.json                       {"format", "version", "num_items", "meta",
                                      "shards": [{"file", "num_items", "bytes", "sha256"}]}
    shard-000000.safetensors         one tensor per field, first dim = items; captions in the metadata

The folder is built under a temporary sibling and renamed into place at the end, so readers never see a
half-written set. Readers validate a set like a checkpoint before any item is read (see :class:`ShardReader`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import warnings
from bisect import bisect_right
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from flexitok.data.base import DatasetError
from flexitok.utils.files import replace_dir

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
INDEX_VERSION = 1
OWNER_FILE = ".owner"
_SHA256 = re.compile(r"[0-9a-f]{64}")

# Shard files whose SHA-256 this process has checked: (real path, size, mtime_ns, digest). Re-opening a set (a
# second dataset, an eval copy) then only compares sizes and times.
_VERIFIED: set[tuple[str, int, int, str]] = set()

# A per-format check of one shard's fields: ({name: (safetensors dtype, shape)}, items in the shard, index meta).
ShardSchema = Callable[[dict[str, tuple[str, tuple[int, ...]]], int, dict[str, Any]], None]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_ST_DTYPES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
}


def save_shard(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file whose bytes depend only on its contents (sorted header keys).

    ``safetensors.torch.save_file`` orders the metadata keys differently from run to run, so two runs that
    tokenize the same images would write different bytes (and hashes); shard sets are compared by hash.
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        blob = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": _ST_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def shard_entry(path: Path, num_items: int) -> dict[str, Any]:
    """The index entry of a finished shard file: name, item count, size and SHA-256."""
    return {"file": path.name, "num_items": num_items, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def write_index(folder: Path, fmt: str, shards: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Write ``folder/index.json`` for ``shards`` (entries from :func:`shard_entry`)."""
    index = {
        "format": fmt,
        "version": INDEX_VERSION,
        "num_items": sum(int(s["num_items"]) for s in shards),
        "shards": shards,
        "meta": meta,
    }
    tmp = folder / f".{INDEX_FILE}.tmp"
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, folder / INDEX_FILE)


def claim_temp_dir(folder: Path) -> None:
    """Mark ``folder`` as owned by this process (host + pid), so a later writer can tell a leftover from a live one."""
    (folder / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temp_dir(folder: Path) -> bool:
    """True when ``folder`` was claimed by a process of this host that no longer runs (e.g. killed with -9)."""
    try:
        host, pid = (folder / OWNER_FILE).read_text().split()
        return host == socket.gethostname() and not _pid_alive(int(pid))
    except (OSError, ValueError):
        return False


def remove_stale_temp_dirs(out_dir: Path) -> list[Path]:
    """Delete the temporary siblings ``.<name>.tmp-*`` of ``out_dir`` that dead writers left; returns them."""
    removed = []
    if out_dir.parent.is_dir():
        for tmp in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
            if tmp.is_dir() and is_stale_temp_dir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp)
    if removed:
        logger.info("removed %d temporary folder(s) left by interrupted writers of %s", len(removed), out_dir)
    return removed


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
        remove_stale_temp_dirs(self.out_dir)
        self._tmp = Path(tempfile.mkdtemp(dir=self.out_dir.parent, prefix=f".{self.out_dir.name}.tmp-"))
        claim_temp_dir(self._tmp)
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
        save_shard(tensors, self._tmp / name, metadata)
        self._shards.append(shard_entry(self._tmp / name, self._buffered))
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
            write_index(self._tmp, self.fmt, self._shards, self.meta)
            (self._tmp / OWNER_FILE).unlink()
            # An existing folder is only replaced when overwrite=True or it is empty.
            replace_dir(self._tmp, self.out_dir)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ShardReader:
    """Random access to items of a shard set. File handles open lazily per process (safe with DataLoader fork).

    The set is validated when the reader is made (so in the main process, before any DataLoader worker starts):
    the index schema and counts, shard names confined to the folder (no ``..``, absolute paths or symlinks out),
    each shard's size and SHA-256 (hashed once per process), its safetensors header (not truncated), field
    shapes and item counts, and the per-format ``schema`` (dtypes). Sets written by flexitok 0.1.0 carry no
    hashes: they are read with one warning and without the content check. Any fault is a :class:`DatasetError`.
    """

    def __init__(self, root: str | Path, fmt: str, schema: ShardSchema | None = None) -> None:
        self.root = Path(root)
        index_path = self.root / INDEX_FILE
        if not index_path.is_file():
            raise DatasetError(f"{self.root} is not a {fmt} folder: {INDEX_FILE} is missing")
        try:
            index = json.loads(index_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{index_path} is not valid JSON: {e}") from e
        if not isinstance(index, dict):
            raise DatasetError(f"{index_path} must hold a JSON object, got {type(index).__name__}")
        if index.get("format") != fmt:
            raise DatasetError(f"{self.root} holds {index.get('format')!r} data, expected {fmt!r}")
        if index.get("version") != INDEX_VERSION:
            raise DatasetError(f"{index_path} has version {index.get('version')}, this flexitok reads {INDEX_VERSION}")
        meta = index.get("meta", {})
        if not isinstance(meta, dict):
            raise DatasetError(f"{index_path}: meta must be an object, got {type(meta).__name__}")
        self.meta: dict[str, Any] = meta
        shards = index.get("shards")
        if not isinstance(shards, list) or not shards:
            raise DatasetError(f"{index_path}: shards must be a non-empty list")
        total = index.get("num_items")
        if not isinstance(total, int) or isinstance(total, bool) or total < 1:
            raise DatasetError(f"{index_path}: num_items must be a positive integer, got {total!r}")
        entries = [self._check_entry(index_path, i, s) for i, s in enumerate(shards)]
        names = [e["file"] for e in entries]
        if len(set(names)) != len(names):
            raise DatasetError(f"{index_path}: a shard file is listed twice")
        if sum(e["num_items"] for e in entries) != total:
            raise DatasetError(
                f"{index_path}: num_items={total} but the shards hold {sum(e['num_items'] for e in entries)} items"
            )
        self.shard_files = [self._confined(index_path, e["file"]) for e in entries]
        missing = [str(p) for p in self.shard_files if not p.is_file()]
        if missing:
            raise DatasetError(f"shard file(s) missing from {self.root}: {', '.join(missing[:5])}")
        hashed = ["sha256" in e for e in entries]
        if any(hashed) and not all(hashed):
            raise DatasetError(f"{index_path}: some shards have a sha256 and some do not")
        if not any(hashed):
            msg = (
                f"{self.root}: this shard set has no SHA-256 per shard (written by flexitok 0.1.0), so damaged "
                "shard contents cannot be detected; re-write it with this version to add them"
            )
            warnings.warn(msg, stacklevel=3)
            logger.warning(msg)
        for path, entry in zip(self.shard_files, entries, strict=True):
            if "sha256" in entry:
                self._verify_file(path, entry)
            self._check_header(path, entry["num_items"], schema)
        self.offsets = [0]
        for entry in entries:
            self.offsets.append(self.offsets[-1] + entry["num_items"])
        self.num_items = self.offsets[-1]
        self._handles: dict[int, Any] = {}
        self._captions: dict[int, list[str] | None] = {}

    @staticmethod
    def _check_entry(index_path: Path, i: int, entry: Any) -> dict[str, Any]:
        where = f"{index_path}: shards[{i}]"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where} must be an object, got {type(entry).__name__}")
        if not isinstance(entry.get("file"), str) or not entry["file"]:
            raise DatasetError(f"{where}.file must be a file name, got {entry.get('file')!r}")
        n = entry.get("num_items")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise DatasetError(f"{where}.num_items must be a positive integer, got {n!r}")
        if "sha256" in entry or "bytes" in entry:
            if not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
                raise DatasetError(f"{where}.sha256 must be 64 lowercase hex digits, got {entry.get('sha256')!r:.80}")
            if not _is_count(entry.get("bytes")) or entry["bytes"] < 0:
                raise DatasetError(f"{where}.bytes must be a non-negative integer, got {entry.get('bytes')!r}")
        return entry

    def _confined(self, index_path: Path, name: str) -> Path:
        # Plain names only, and the file (symlinks resolved) must lie inside the set folder.
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or "\\" in name or name.startswith("~"):
            raise DatasetError(f"{index_path}: shard file {name!r} is not a name inside the set folder")
        path = self.root / rel
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root):
            raise DatasetError(f"{index_path}: shard file {name!r} points outside the set folder")
        return path

    @staticmethod
    def _verify_file(path: Path, entry: dict[str, Any]) -> None:
        st = path.stat()
        if st.st_size != int(entry["bytes"]):
            raise DatasetError(
                f"shard {path} has {st.st_size} bytes, the index says {entry['bytes']} (truncated or replaced)"
            )
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, entry["sha256"])
        if key in _VERIFIED:
            return
        if file_sha256(path) != entry["sha256"]:
            raise DatasetError(f"shard {path} does not match its SHA-256 in the index (the file is damaged)")
        _VERIFIED.add(key)

    def _check_header(self, path: Path, n_items: int, schema: ShardSchema | None) -> None:
        try:
            handle = safe_open(str(path), framework="pt")
            fields = {
                k: (handle.get_slice(k).get_dtype(), tuple(handle.get_slice(k).get_shape())) for k in handle.keys()
            }
            metadata = handle.metadata() or {}
        except Exception as e:  # safetensors raises its own error type for bad headers
            raise DatasetError(f"shard {path} is not a readable safetensors file (truncated or damaged): {e}") from e
        bad = {k: shape for k, (_, shape) in fields.items() if not shape or shape[0] != n_items}
        if not fields or bad:
            raise DatasetError(f"shard {path}: fields {bad or fields} do not hold the {n_items} items the index says")
        captions = metadata.get("captions")
        if captions is not None:
            try:
                caps = json.loads(captions)
            except json.JSONDecodeError as e:
                raise DatasetError(f"shard {path}: captions are not valid JSON") from e
            if not isinstance(caps, list) or len(caps) != n_items or not all(isinstance(c, str) for c in caps):
                raise DatasetError(f"shard {path}: captions must be {n_items} strings")
        if schema is not None:
            try:
                schema(fields, n_items, self.meta)
            except DatasetError as e:
                raise DatasetError(f"shard {path}: {e}") from e

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
        try:
            handle = self._handle(shard)
            fields = {name: handle.get_slice(name)[local : local + 1][0] for name in handle.keys()}
        except Exception as e:  # the file changed after the set was validated
            raise DatasetError(f"cannot read item {local} of shard {self.shard_files[shard]}: {e}") from e
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
        self.reader = ShardReader(root, self.FORMAT, schema=self.check_shard)
        self.meta = self.reader.meta
        self.num_items = len(self.reader) if limit is None else min(limit, len(self.reader))

    def __len__(self) -> int:
        return self.num_items

    @staticmethod
    def check_shard(fields: dict[str, tuple[str, tuple[int, ...]]], n_items: int, meta: dict[str, Any]) -> None:
        """Per-format check of one shard's ``{field: (safetensors dtype, shape)}``; raise DatasetError."""

    def _item(self, fields: dict[str, torch.Tensor]) -> ItemT:
        raise NotImplementedError

    def __getitem__(self, index: int) -> ItemT:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        fields, caption = self.reader.get(index % len(self))
        try:
            item = self._item(fields)
        except DatasetError as e:
            raise DatasetError(f"{self.reader.root}: item {index % len(self)}: {e}") from e
        if caption is not None:
            item["caption"] = caption  # type: ignore[index]
        return item
