"""Token shards: FlexTok token sequences (+ label, optional caption) stored for generator training."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from flexitok.data.base import DatasetError, collate_images
from flexitok.data.shards import ShardDataset, ShardWriter, file_sha256, save_shard, shard_entry, write_index
from flexitok.utils.files import replace_dir

logger = logging.getLogger(__name__)

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
        if not isinstance(class_names, (list, tuple)) or not all(isinstance(n, str) for n in class_names):
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


# ------------------------------------------------------------------------------------ resumable pretokenize

PLAN_FILE = "plan.json"


@dataclass
class PretokenizeJob:
    """Where and how :func:`pretokenize_dataset` writes a token shard set.

    Shard ``i`` always holds dataset items ``[i * shard_size, (i + 1) * shard_size)`` and is tokenized in batches
    that never cross a shard boundary, so the set does not depend on how many ranks wrote it or how often the run
    was interrupted. Finished shards are written atomically into ``.<out_dir name>.partial`` next to ``out_dir``
    (with a ``.json`` marker holding their size and SHA-256); ``resume`` keeps them, otherwise a leftover work
    folder is removed first. Rank ``r`` of ``world_size`` takes the contiguous shards
    ``[r * K // world_size, (r + 1) * K // world_size)``; rank 0 writes the index once every shard is there.
    """

    out_dir: str | Path
    shard_size: int = 65536
    batch_size: int = 64
    num_workers: int = 0
    rank: int = 0
    world_size: int = 1
    resume: bool = False
    overwrite: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    class_names: Sequence[str] | None = None
    num_classes: int | None = None
    poll_seconds: float = 1.0

    def __post_init__(self) -> None:
        for name in ("shard_size", "batch_size", "world_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DatasetError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise DatasetError(f"num_workers must be an integer >= 0, got {self.num_workers!r}")
        if not 0 <= self.rank < self.world_size:
            raise DatasetError(f"rank {self.rank} outside [0, {self.world_size})")

    @property
    def work_dir(self) -> Path:
        out = Path(self.out_dir)
        return out.parent / f".{out.name}.partial"


class _ShardBatches:
    """Batch sampler: the item indices of each shard in ``shards``, in batches that stop at the shard's end
    (made lazily: a 100M-item set would not fit as a list of lists)."""

    def __init__(self, shards: list[int], shard_size: int, batch_size: int, n: int) -> None:
        self.shards, self.shard_size, self.batch_size, self.n = shards, shard_size, batch_size, n

    def _bounds(self, i: int) -> tuple[int, int]:
        return i * self.shard_size, min((i + 1) * self.shard_size, self.n)

    def __iter__(self) -> Iterator[list[int]]:
        for i in self.shards:
            lo, hi = self._bounds(i)
            for start in range(lo, hi, self.batch_size):
                yield list(range(start, min(start + self.batch_size, hi)))

    def __len__(self) -> int:
        return sum(-(-(hi - lo) // self.batch_size) for lo, hi in map(self._bounds, self.shards))


def _shard_name(i: int) -> str:
    return f"shard-{i:06d}.safetensors"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _finished(work: Path, i: int) -> dict[str, Any] | None:
    """The marker of shard ``i`` when its file is complete and intact, else None (the shard is redone)."""
    marker, path = work / f"{_shard_name(i)}.json", work / _shard_name(i)
    try:
        entry = json.loads(marker.read_text())
        if path.stat().st_size == entry["bytes"] and file_sha256(path) == entry["sha256"]:
            return dict(entry)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _prepare(job: PretokenizeJob, plan: dict[str, Any], barrier: Callable[[], None] | None) -> Path:
    out, work = Path(job.out_dir), job.work_dir
    if job.rank == 0:
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not job.overwrite:
            raise DatasetError(f"output folder {out} exists and is not empty (pass overwrite=True / --overwrite)")
        if work.exists() and not job.resume:
            logger.warning("removing %s, left by an interrupted run (resume=True / --resume continues one)", work)
            shutil.rmtree(work)
    if barrier is not None:
        barrier()
    work.mkdir(parents=True, exist_ok=True)
    plan_path = work / PLAN_FILE
    if not plan_path.exists():
        _write_json(plan_path, plan)
    try:
        stored = json.loads(plan_path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{plan_path} is unreadable ({e}); remove {work} or run without --resume") from e
    if stored != json.loads(json.dumps(plan)):
        diff = sorted(k for k in set(plan) | set(stored) if stored.get(k) != json.loads(json.dumps(plan.get(k))))
        raise DatasetError(
            f"{work} holds an interrupted run with other settings ({', '.join(diff)} differ); run without --resume "
            "to start over"
        )
    return work


@torch.no_grad()
def pretokenize_dataset(
    tokenize: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    job: PretokenizeJob,
    barrier: Callable[[], None] | None = None,
) -> Path | None:
    """Tokenize every item of a map-style ``dataset`` (``{"image": [3, H, W], "label", "caption"?}``) into a token
    shard set at ``job.out_dir`` (see :class:`PretokenizeJob`): ``tokenize`` maps images ``[B, 3, H, W]`` to
    integer ids ``[B, N]``. ``barrier`` synchronises the ranks once after the work folder is set up (e.g.
    ``torch.distributed.barrier``). Returns ``out_dir`` on rank 0 and None on the other ranks.
    """
    if not hasattr(dataset, "__len__"):
        raise DatasetError("pretokenize_dataset needs a map-style dataset with a length")
    n = len(dataset)
    if n < 1:
        raise DatasetError("nothing to write: the dataset is empty")
    names, n_classes = check_classes(
        job.class_names if job.class_names is not None else job.meta.get("class_names"),
        job.num_classes if job.num_classes is not None else job.meta.get("num_classes"),
    )
    meta = {**job.meta, "class_names": names, "num_classes": n_classes}
    plan = {"format": TOKEN_FORMAT, "num_items": n, "shard_size": job.shard_size, "meta": meta}
    work = _prepare(job, plan, barrier)
    n_shards = -(-n // job.shard_size)
    mine = range(job.rank * n_shards // job.world_size, (job.rank + 1) * n_shards // job.world_size)
    pending = [i for i in mine if _finished(work, i) is None]
    batches = _ShardBatches(pending, job.shard_size, job.batch_size, n)
    total = sum(min((i + 1) * job.shard_size, n) - i * job.shard_size for i in pending)
    if pending:
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=job.num_workers, collate_fn=collate_images)
        bar = tqdm(total=total, desc=f"pretokenize rank {job.rank}", unit="img", disable=job.rank != 0)
        it = iter(loader)
        for i in pending:
            size = min((i + 1) * job.shard_size, n) - i * job.shard_size
            tokens, labels, captions, got = [], [], [], 0
            while got < size:
                batch = next(it)
                ids = torch.as_tensor(tokenize(batch["image"])).cpu()
                b = batch["image"].shape[0]
                if ids.ndim != 2 or ids.shape[0] != b or ids.dtype.is_floating_point:
                    raise DatasetError(f"tokenize returned {tuple(ids.shape)} {ids.dtype}, expected integer [{b}, N]")
                tokens.append(ids)
                labels.append(batch["label"])
                captions.append(batch.get("caption"))
                got += b
                bar.update(b)
            _write_shard(work, i, tokens, labels, captions, meta)
        bar.close()
    return _assemble(job, work, n_shards, meta)


def pretokenize_streams(
    tokenize: Callable[[torch.Tensor], torch.Tensor],
    sources: Sequence[Callable[[], Iterable[dict[str, Any]]]],
    job: PretokenizeJob,
    barrier: Callable[[], None] | None = None,
    plan_extra: dict[str, Any] | None = None,
) -> Path | None:
    """Like :func:`pretokenize_dataset` for streaming inputs (webdataset tars): output shard ``i`` holds every
    item of ``sources[i]()`` (batches ``{"image": [B, 3, H, W], "label": [B], "caption"?: list[str]}``) in
    order; ranks take contiguous source ranges; ``job.shard_size`` is not used. ``plan_extra`` (e.g. the input
    file names) must match on resume."""
    if not sources:
        raise DatasetError("nothing to write: no input shards")
    names, n_classes = check_classes(
        job.class_names if job.class_names is not None else job.meta.get("class_names"),
        job.num_classes if job.num_classes is not None else job.meta.get("num_classes"),
    )
    meta = {**job.meta, "class_names": names, "num_classes": n_classes}
    plan = {"format": TOKEN_FORMAT, "num_sources": len(sources), "meta": meta, **(plan_extra or {})}
    work = _prepare(job, plan, barrier)
    n_shards = len(sources)
    mine = range(job.rank * n_shards // job.world_size, (job.rank + 1) * n_shards // job.world_size)
    bar = tqdm(desc=f"pretokenize rank {job.rank}", unit="img", disable=job.rank != 0)
    for i in mine:
        if _finished(work, i) is not None:
            continue
        tokens, labels, captions = [], [], []
        for batch in sources[i]():
            ids = torch.as_tensor(tokenize(batch["image"])).cpu()
            b = batch["image"].shape[0]
            if ids.ndim != 2 or ids.shape[0] != b or ids.dtype.is_floating_point:
                raise DatasetError(f"tokenize returned {tuple(ids.shape)} {ids.dtype}, expected integer [{b}, N]")
            tokens.append(ids)
            labels.append(torch.as_tensor(batch["label"]).long())
            captions.append(batch.get("caption"))
            bar.update(b)
        if not tokens:
            raise DatasetError(f"input shard {i} yielded no readable sample")
        _write_shard(work, i, tokens, labels, captions, meta)
    bar.close()
    return _assemble(job, work, n_shards, meta)


def _assemble(job: PretokenizeJob, work: Path, n_shards: int, meta: dict[str, Any]) -> Path | None:
    """Rank 0: wait for every shard, write the index and move the work folder into place."""
    if job.rank != 0:
        return None
    entries: list[dict[str, Any]] = []
    for i in range(n_shards):
        entry = _finished(work, i)
        while entry is None:  # another rank is still writing it (torchrun stops us if that rank dies)
            time.sleep(job.poll_seconds)
            entry = _finished(work, i)
        entries.append(entry)
    n_tokens = {int(e.pop("n_tokens")) for e in entries}
    if len(n_tokens) != 1:
        raise DatasetError(f"shards disagree on the number of tokens per item: {sorted(n_tokens)}")
    for f in [work / PLAN_FILE, *(work / f"{_shard_name(i)}.json" for i in range(n_shards))]:
        f.unlink()
    write_index(work, TOKEN_FORMAT, entries, {**meta, "n_tokens": n_tokens.pop()})
    replace_dir(work, Path(job.out_dir))
    return Path(job.out_dir)


def _write_shard(
    work: Path,
    i: int,
    tokens: list[torch.Tensor],
    labels: list[torch.Tensor],
    captions: list[list[str] | None],
    meta: dict[str, Any],
) -> None:
    ids = torch.cat(tokens)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= 2**31):
        raise DatasetError("token ids must lie in [0, 2**31)")
    lab = torch.cat(labels).long()
    n_classes = meta.get("num_classes")
    if n_classes is not None and lab.numel() and not -1 <= int(lab.min()) <= int(lab.max()) < n_classes:
        raise DatasetError(f"labels must lie in [-1, {n_classes}) for {n_classes} classes")
    metadata = {"format": TOKEN_FORMAT}
    if all(c is not None for c in captions):
        metadata["captions"] = json.dumps([c for cs in captions if cs is not None for c in cs])
    path = work / _shard_name(i)
    tmp = work / f".{path.name}.tmp-{os.getpid()}"
    save_shard({"tokens": ids.to(torch.int32), "labels": lab}, tmp, metadata)
    os.replace(tmp, path)  # a kill leaves either no shard or a whole one; the marker below says it is finished
    entry = shard_entry(path, int(ids.shape[0]))
    _write_json(work / f"{path.name}.json", {**entry, "n_tokens": int(ids.shape[1])})
