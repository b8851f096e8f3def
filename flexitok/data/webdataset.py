"""Tar shards of ``<key>.jpg|png|webp`` + ``<key>.cls`` samples: read with the ``webdataset`` library, written here.

Reading (:class:`WebDatasetShards`) is a ``webdataset`` pipeline: a seeded per-epoch shard shuffle or resampled
shards, an explicit split by rank and DataLoader worker, tar expansion, a seeded sample-level shuffle buffer,
then our own decode + augmentation. Every random choice is a function of (seed, epoch, rank, worker, position)
so a stream is reproducible, and :meth:`WebDatasetShards.skip_batches` lets a resumed run continue mid-epoch
without decoding the skipped samples (see docs/training.md, "Resume with streaming data").

Writing (:func:`write_webdataset_shards`, :func:`write_folder_shards`) uses ``tarfile`` directly: each shard is
written to a temporary file and renamed into place, and a ``shardindex.json`` in the ``wids`` format records
the number of samples per shard.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from flexitok.data.base import DatasetError, ImageItem, index_generator
from flexitok.data.folder import _LOAD_ERRORS, is_readable_image, list_images
from flexitok.data.splits import read_classes_file
from flexitok.data.transforms import ImageTransform
from flexitok.io.images import center_crop_resize, exif_transpose, to_rgb

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
logger = logging.getLogger(__name__)

SHARD_INDEX = "shardindex.json"
# One JSON line per sample written from files: {"shard", "key", "file", "label"} (named in the index as "samples").
SAMPLES_FILE = "samples.jsonl"  # the wids shard-index format: {"wids_version": 1, "shardlist": [...]}


def resolve_shards(spec: str | Path | list[str]) -> list[Path]:
    """Shard list from a directory (all ``*.tar`` inside), a glob pattern, a comma list, or a list of paths."""
    if isinstance(spec, list):
        paths = [Path(p) for p in spec]
    else:
        text = str(spec)
        if Path(text).is_dir():
            paths = sorted(Path(text).glob("*.tar"))
        elif "," in text:
            paths = [Path(p.strip()) for p in text.split(",") if p.strip()]
        elif any(ch in text for ch in "*?["):
            paths = [Path(p) for p in sorted(glob.glob(text))]
        else:
            paths = [Path(text)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"webdataset shard(s) not found: {', '.join(missing[:5])}")
    if not paths:
        raise DatasetError(f"no .tar shards found for {spec}")
    return paths


def shard_sizes(shards: list[Path]) -> dict[Path, int] | None:
    """Samples per shard from the ``shardindex.json`` beside the shards (None when absent or incomplete)."""
    sizes: dict[Path, int] = {}
    for folder in {p.parent for p in shards}:
        index = folder / SHARD_INDEX
        if not index.is_file():
            return None
        try:
            entries = json.loads(index.read_text())["shardlist"]
            sizes.update({(folder / e["url"]).resolve(): int(e["nsamples"]) for e in entries})
        except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            raise DatasetError(f"{index} is not a valid shard index: {e}") from e
    found = {p: sizes.get(p.resolve()) for p in shards}
    return None if any(v is None for v in found.values()) else found  # type: ignore[return-value]


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix-style), so nearby tuples give unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & (2**64 - 1))) * 0xBF58476D1CE4E5B9 & (2**64 - 1)
        x ^= x >> 31
    return x & (2**63 - 1)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))  # torchrun, before init


def shard_class_names(shards: list[Path]) -> list[str] | None:
    """Class names recorded beside the shards: ``class_names`` in their ``shardindex.json``, else a
    ``classes.json`` in their folder or its parent (what ``flexitok shards`` writes); None when none is recorded."""
    found: list[str] | None = None
    for folder in sorted({p.parent for p in shards}):
        names: list[str] | None = None
        index = folder / SHARD_INDEX
        if index.is_file():
            try:
                names = json.loads(index.read_text()).get("class_names")
            except (OSError, AttributeError, ValueError) as e:
                raise DatasetError(f"{index} is not a valid shard index: {e}") from e
            if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
                raise DatasetError(f"{index}: class_names must be a list of strings")
        if names is None:
            names = read_classes_file(folder) or read_classes_file(folder.parent)
        if names is not None:
            if found is not None and names != found:
                raise DatasetError(f"the shards under {folder} record other class names than the rest")
            found = names
    return found


def count_shard_samples(shard: Path) -> int:
    """Samples in one tar shard, grouped by key as the reader groups them (reads the shard once)."""
    import webdataset as wds

    return sum(
        1 for _ in wds.tariterators.tarfile_samples(iter([{"url": str(shard)}]), handler=wds.ignore_and_continue)
    )


# Why a sample or shard was skipped (the keys of WebDatasetShards.skipped).
SKIP_REASONS: tuple[str, ...] = (
    "no image",
    "undecodable image",
    "decompression bomb",
    "bad .cls",
    "label out of range",
    "unreadable shard",
    "truncated shard",
)
# A stream that draws this many samples in a row without yielding one stops (it would spin forever otherwise).
MAX_SAMPLES_WITHOUT_YIELD = 1000
# The skip-ratio check starts after this many drawn samples per reader (it always runs at the end of an epoch).
MIN_DRAWS_FOR_SKIP_RATIO = 1000
_INT64_MAX = 2**63 - 1


class WebDatasetShards(IterableDataset):
    """Iterable over tar shards; items ``{"image": [3, S, S] in [-1, 1], "label": int (-1 without .cls),
    "skipped": int}`` (``skipped``: samples this reader skipped since its previous item).

    * ``shuffle_shards``: shuffle the shard order each epoch (seed, epoch), the same order on every rank;
    * ``resampled``: instead, every reader draws shards with replacement forever (multi-node style); an epoch is
      then ``epoch_size`` samples per rank (default: the shard index's total / world size);
    * shards are split over ``rank * num_workers + worker``; ``rank`` / ``world_size`` default to
      ``torch.distributed`` (or torchrun's environment before the process group exists);
    * ``shuffle_buffer``: sample-level shuffle buffer per reader (0: off), seeded per (seed, epoch, reader);
    * each sample's augmentation draws from a generator seeded by (seed, epoch, reader, position);
    * ``holdout``: the first ``holdout`` samples of the last shard (then of the one before it, ...) are held out:
      the stream skips them, or yields only them (in shard order, no shuffle) with ``holdout_only``.

    ``class_names`` come from the shard index (see :func:`shard_class_names`); labels outside them are skipped.
    Samples without an image, whose image fails to decode, or with a bad label are skipped, counted per reason
    in ``skipped`` (per process; ``num_skipped`` is the total) and reported at the end of each epoch. A reader
    whose skip ratio exceeds ``max_skip_ratio``, or that draws ``MAX_SAMPLES_WITHOUT_YIELD`` samples (or every
    shard several times) in a row without yielding one, raises :class:`DatasetError` naming the shards.
    ``limit`` caps the items each reader yields per epoch. ``captions``: items also carry ``"caption"`` (see
    :func:`sample_caption`; img2dataset shards of jpg + txt/json work as they are).
    """

    def __init__(
        self,
        shards: str | Path | list[str],
        transform: ImageTransform | None = None,
        shuffle_shards: bool = False,
        seed: int = 0,
        limit: int | None = None,
        shuffle_buffer: int = 0,
        resampled: bool = False,
        epoch_size: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        holdout: int = 0,
        holdout_only: bool = False,
        max_skip_ratio: float = 0.01,
        captions: bool = False,
    ) -> None:
        self.shards = resolve_shards(shards)
        self.captions = captions
        self.transform = transform if transform is not None else ImageTransform(size=256)
        self.shuffle_shards = shuffle_shards
        self.seed = seed
        self.limit = limit
        if shuffle_buffer < 0:
            raise DatasetError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        if epoch_size is not None and epoch_size < 1:
            raise DatasetError(f"epoch_size must be >= 1, got {epoch_size}")
        self.epoch_size = epoch_size
        if not (isinstance(max_skip_ratio, int | float) and 0.0 <= max_skip_ratio <= 1.0):
            raise DatasetError(f"max_skip_ratio must be in [0, 1], got {max_skip_ratio}")
        self.max_skip_ratio = float(max_skip_ratio)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skipped: dict[str, int] = dict.fromkeys(SKIP_REASONS, 0)
        self._skip: tuple[int, int, int] | None = None  # (batches, batch_size, num_workers) for the next pass
        self.class_names: list[str] = shard_class_names(self.shards) or []
        self.holdout, self.holdout_only = int(holdout), bool(holdout_only)
        self._held = self._held_out_counts() if self.holdout > 0 else {}
        known = shard_sizes(self.shards)
        self._index_sizes: dict[str, int] = {str(p): n for p, n in known.items()} if known is not None else {}
        if self.holdout_only:
            self.shards = [p for p in self.shards if self._held.get(str(p), 0) > 0]
            self.shuffle_shards, self.shuffle_buffer, self.resampled = False, 0, False
        elif self._held:  # a shard held out entirely never feeds training (resampled draws would come back empty)
            sizes = self._sizes
            self.shards = [p for p in self.shards if sizes.get(str(p), 1) > self._held.get(str(p), 0)]

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def _held_out_counts(self) -> dict[str, int]:
        """``{shard: leading samples held out}``: ``holdout`` samples taken from the last shard backwards."""
        known = shard_sizes(self.shards)
        self._sizes: dict[str, int] = {}
        held: dict[str, int] = {}
        left = self.holdout
        for shard in reversed(self.shards):
            size = known[shard] if known is not None else count_shard_samples(shard)
            self._sizes[str(shard)] = size
            take = min(size, left)
            if take:
                held[str(shard)] = take
            left -= take
            if left == 0:
                break
        if known is not None:
            total: int | None = sum(known.values())
        else:  # counted: the total is known only when every shard was counted
            total = sum(self._sizes.values()) if len(self._sizes) == len(self.shards) else None
        if not self.holdout_only and (left > 0 or (total is not None and total <= self.holdout)):
            raise DatasetError(
                f"cannot hold out {self.holdout} samples of {len(self.shards)} shard(s) "
                f"({total if total is not None else 'fewer'} samples) and still train on the rest"
            )
        return held

    # ------------------------------------------------------------------ trainer hooks
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_rank(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def skip_batches(self, batches: int, batch_size: int, num_workers: int) -> None:
        """Make the next pass start after ``batches`` batches of this epoch, as a DataLoader with
        ``num_workers`` workers and ``batch_size`` would have produced them, without decoding the skipped ones.

        DataLoader workers hand out batches in turn (batch j comes from worker j % W), so worker w of the resumed
        loader continues the stream of worker (batches + w) % W of the original one.
        """
        self._skip = (int(batches), int(batch_size), max(1, int(num_workers))) if batches > 0 else None

    # ------------------------------------------------------------------ the pipeline
    def _rank_world(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        if self.holdout_only:  # a fixed evaluation set: every rank reads all of it (DataLoader workers share it)
            return 0, 1
        return _rank_world()

    @property
    def num_held_out(self) -> int:
        """Samples held out (``holdout``; all of them read with ``holdout_only``, fewer if some fail to decode).
        Deliberately not ``__len__``: callers test ``hasattr(ds, "__len__")`` to tell streams from datasets."""
        return sum(self._held.values())

    def _epoch_samples_per_reader(self, readers_per_rank: int, world: int) -> int | None:
        if not self.resampled:
            return None
        size = self.epoch_size
        if size is None:
            sizes = shard_sizes(self.shards)
            if sizes is None:
                raise DatasetError(
                    "resampled shards need an epoch size: set data.epoch_size (samples per rank) or write the "
                    f"shards with a {SHARD_INDEX} (flexitok shards does)"
                )
            size = (sum(sizes.values()) - sum(self._held.values())) // world
        return max(1, size // readers_per_rank)

    def _shard_source(self, reader: int, readers: int, stream_seed: int) -> Iterator[dict[str, str]]:
        urls = [str(p) for p in self.shards]
        if self.resampled:
            rng = random.Random(stream_seed)
            while True:
                yield {"url": rng.choice(urls)}
        else:
            if self.shuffle_shards:
                random.Random(_mix(self.seed, self.epoch, 1)).shuffle(urls)
            if readers > len(urls) and reader == 0 and not self.holdout_only:
                warnings.warn(
                    f"{len(urls)} shard(s) for {readers} readers: some readers get no data; write more shards",
                    stacklevel=2,
                )
            yield from ({"url": u} for u in urls[reader::readers])

    def _shard_names(self) -> str:
        names = [str(p) for p in self.shards[:3]]
        more = f" and {len(self.shards) - 3} more" if len(self.shards) > 3 else ""
        return ", ".join(names) + more

    def _count_shard_error(self, exn: Exception) -> bool:
        self.skipped["unreadable shard"] += 1
        return True  # go on with the next member or shard; the draw guard stops a stream that never recovers

    def _expand(self, source: Iterator[dict[str, str]]) -> Iterator[dict[str, Any]]:
        """Tar samples shard by shard, dropping (or keeping only) the held-out leading samples of each shard.
        A resampled stream whose shards keep giving no sample stops with an error instead of spinning."""
        import webdataset as wds

        empty_draws = 0
        max_empty = max(64, 8 * len(self.shards))
        for shard in source:
            url = shard["url"]
            held = self._held.get(url, 0)
            got = seen = 0
            samples = wds.tariterators.tarfile_samples(iter([{"url": url}]), handler=self._count_shard_error)
            try:
                for pos, sample in enumerate(samples):
                    seen = pos + 1
                    if self.holdout_only:
                        if pos >= held:
                            break
                    elif pos < held:
                        continue
                    got += 1
                    yield sample
            finally:
                samples.close()  # a generator: closes the shard file now
            expected = self._index_sizes.get(url)
            if expected is not None and seen < expected and not (self.holdout_only and seen >= held):
                self.skipped["truncated shard"] += expected - seen  # fewer samples than the shard index says
            empty_draws = 0 if got else empty_draws + 1
            if self.resampled and empty_draws >= max_empty:
                raise DatasetError(
                    f"{empty_draws} shard draws in a row gave no sample (shards missing, empty or unreadable: "
                    f"{self._shard_names()}); skipped so far: {self._skip_summary()}"
                )

    def _skip_summary(self) -> str:
        parts = [f"{reason} {n}" for reason, n in self.skipped.items() if n]
        return ", ".join(parts) if parts else "none"

    def __iter__(self) -> Iterator[ImageItem]:
        import webdataset as wds

        rank, world = self._rank_world()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        skip_samples = 0
        if self._skip is not None:
            batches, batch_size, skip_workers = self._skip
            if skip_workers != num_workers:
                raise DatasetError(
                    f"skip_batches was set for {skip_workers} DataLoader workers but the loader has {num_workers}"
                )
            # Loader worker w yields original batch (batches + w) first: original worker (batches + w) % W, after
            # (batches + w) // W of that worker's batches.
            worker, done = (batches + worker) % num_workers, (batches + worker) // num_workers
            skip_samples = done * batch_size
        reader, readers = rank * num_workers + worker, world * num_workers
        stream_seed = _mix(self.seed, self.epoch, reader)
        per_reader = self._epoch_samples_per_reader(num_workers, world)
        cap = min(x for x in (per_reader, self.limit) if x is not None) if (per_reader or self.limit) else None
        stages: list[Any] = [self._expand]
        if self.shuffle_buffer > 0:
            stages.append(
                wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=random.Random(stream_seed + 1))
            )
        pipeline = wds.DataPipeline(lambda: self._shard_source(reader, readers, stream_seed), *stages)
        samples: Iterator[dict[str, Any]] = iter(pipeline)
        position = 0
        produced = 0
        drawn = skipped = since_last = 0
        start_skipped = self.num_skipped
        start_lost = self._lost()
        for sample in samples:
            if cap is not None and produced >= cap:
                break
            position += 1
            if position <= skip_samples:  # resumed mid-epoch: skip without decoding
                produced += 1
                continue
            drawn += 1
            item = self._decode(sample, index_generator(stream_seed, position))
            if item is None:
                skipped += 1
                since_last += 1
                if since_last >= MAX_SAMPLES_WITHOUT_YIELD:
                    raise DatasetError(
                        f"{since_last} samples in a row could not be used ({self._skip_summary()}) in shards "
                        f"{self._shard_names()}"
                    )
                if drawn >= MIN_DRAWS_FOR_SKIP_RATIO:
                    lost = self._lost() - start_lost
                    self._check_skip_ratio(skipped + lost, drawn + lost)
                continue
            item["skipped"] = since_last
            since_last = 0
            produced += 1
            yield item
        lost = self._lost() - start_lost
        self._end_of_epoch(reader, readers, drawn + lost, skipped + lost, start_skipped)

    def _lost(self) -> int:
        """Samples lost to broken shards: those a shard lacks against its index, plus one per read error."""
        return self.skipped["truncated shard"] + self.skipped["unreadable shard"]

    def _check_skip_ratio(self, skipped: int, drawn: int) -> None:
        if drawn and skipped / drawn > self.max_skip_ratio:
            raise DatasetError(
                f"{skipped} of {drawn} samples skipped ({skipped / drawn:.1%} > data.max_skip_ratio "
                f"{self.max_skip_ratio:g}): {self._skip_summary()}; shards {self._shard_names()}"
            )

    def _end_of_epoch(self, reader: int, readers: int, drawn: int, skipped: int, start_skipped: int) -> None:
        shard_errors = self.num_skipped - start_skipped - skipped
        if skipped or shard_errors:
            logger.warning(
                "webdataset epoch %d, reader %d/%d: %d sample(s) used, %d skipped (%s)",
                self.epoch,
                reader,
                readers,
                drawn - skipped,
                skipped,
                self._skip_summary(),
            )
        self._check_skip_ratio(skipped, drawn)

    def _decode(self, sample: dict[str, Any], generator: torch.Generator) -> ImageItem | None:
        data = next((sample[ext] for ext in _IMAGE_EXTS if ext in sample), None)
        if data is None:
            self.skipped["no image"] += 1
            return None
        label = -1
        if "cls" in sample:
            try:
                label = int(bytes(sample["cls"]).decode().strip())
            except (ValueError, UnicodeDecodeError, TypeError):
                self.skipped["bad .cls"] += 1
                return None
            top = len(self.class_names) if self.class_names else _INT64_MAX
            if not -1 <= label < top:
                self.skipped["label out of range"] += 1
                return None
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                pil = img.copy()
        except Image.DecompressionBombError:
            self.skipped["decompression bomb"] += 1
            return None
        except _LOAD_ERRORS:
            self.skipped["undecodable image"] += 1
            return None
        item: ImageItem = {"image": self.transform(pil, generator), "label": label}
        if self.captions:
            item["caption"] = sample_caption(sample)
        return item


def sample_caption(sample: dict[str, Any]) -> str:
    """A sample's caption: its ``.txt`` member, else ``caption`` in its ``.json`` member (img2dataset writes
    both), else ``""``. Undecodable bytes are replaced, not fatal."""
    if isinstance(sample.get("txt"), bytes | bytearray):
        return bytes(sample["txt"]).decode("utf-8", errors="replace").strip()
    if isinstance(sample.get("json"), bytes | bytearray):
        try:
            meta = json.loads(bytes(sample["json"]).decode("utf-8", errors="replace"))
        except ValueError:
            return ""
        caption = meta.get("caption") if isinstance(meta, dict) else None
        return caption.strip() if isinstance(caption, str) else ""
    return ""


# ---------------------------------------------------------------------------------------------- writing


def _encode_image(image: Image.Image | np.ndarray | torch.Tensor, fmt: str) -> bytes:
    if isinstance(image, torch.Tensor):  # [3, H, W] in [-1, 1]
        arr = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        image = Image.fromarray(arr)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    to_rgb(image).save(buf, format="JPEG" if fmt == "jpg" else "PNG", quality=95)
    return buf.getvalue()


class _TarShardWriter:
    """Numbered tar shards written atomically (temp file + rename), with a ``shardindex.json`` at the end."""

    def __init__(self, out_dir: str | Path, shard_size: int, prefix: str, class_names: list[str] | None = None) -> None:
        if shard_size < 1:
            raise DatasetError(f"shard_size must be >= 1, got {shard_size}")
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.shard_size, self.prefix = shard_size, prefix
        self.class_names = class_names
        self.records: list[dict[str, Any]] = []  # one per sample when the caller describes its samples
        self.written: list[Path] = []
        self.counts: list[int] = []
        self.tar: tarfile.TarFile | None = None
        self.tmp_path = ""
        self.in_shard = 0
        self.index = 0

    def _add(self, name: str, payload: bytes) -> None:
        assert self.tar is not None
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        info.mtime = int(time.time())
        self.tar.addfile(info, io.BytesIO(payload))

    def add(self, files: dict[str, bytes], record: dict[str, Any] | None = None) -> None:
        """One sample: ``{extension: payload}``, stored as ``<key>.<extension>``; ``record`` (e.g. the original
        file and label) goes to the set's ``samples.jsonl`` with the sample's shard and key."""
        if self.tar is None:
            fd, self.tmp_path = tempfile.mkstemp(dir=self.out, prefix=f".{self.prefix}-", suffix=".tar.tmp")
            os.close(fd)
            self.tar = tarfile.open(self.tmp_path, "w")
        key = f"{self.index:09d}"
        if record is not None:
            self.records.append({"shard": f"{self.prefix}-{len(self.written):06d}.tar", "key": key, **record})
        for ext, payload in files.items():
            self._add(f"{key}.{ext}", payload)
        self.index += 1
        self.in_shard += 1
        if self.in_shard == self.shard_size:
            self.close_shard()

    def close_shard(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        final = self.out / f"{self.prefix}-{len(self.written):06d}.tar"
        os.replace(self.tmp_path, final)
        self.written.append(final)
        self.counts.append(self.in_shard)
        self.tar, self.in_shard = None, 0

    def abort(self) -> None:
        if self.tar is not None:
            self.tar.close()
            Path(self.tmp_path).unlink(missing_ok=True)
            self.tar = None

    def finish(self) -> list[Path]:
        self.close_shard()
        index: dict[str, Any] = {
            "wids_version": 1,
            "shardlist": [{"url": p.name, "nsamples": n} for p, n in zip(self.written, self.counts, strict=True)],
        }
        if self.class_names is not None:
            index["class_names"] = self.class_names
        if self.records:
            tmp_samples = self.out / f".{SAMPLES_FILE}.tmp"
            tmp_samples.write_text("".join(json.dumps(r) + "\n" for r in self.records))
            os.replace(tmp_samples, self.out / SAMPLES_FILE)
            index["samples"] = SAMPLES_FILE
        tmp = self.out / f".{SHARD_INDEX}.tmp"
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, self.out / SHARD_INDEX)
        return self.written


def write_webdataset_shards(
    samples: Iterable[tuple[Image.Image | np.ndarray | torch.Tensor, int]],
    out_dir: str | Path,
    shard_size: int = 1000,
    prefix: str = "shard",
    fmt: str = "png",
) -> list[Path]:
    """Write ``(image, label)`` pairs as ``<prefix>-000000.tar`` shards of ``<key>.<fmt>`` + ``<key>.cls``.

    Each shard is written to a temporary file and renamed into place, so a crash leaves no half shard.
    Returns the shard paths.
    """
    if fmt not in ("png", "jpg"):
        raise DatasetError(f"unsupported image format {fmt!r}; use 'png' or 'jpg'")
    writer = _TarShardWriter(out_dir, shard_size, prefix)
    try:
        for image, label in samples:
            writer.add({fmt: _encode_image(image, fmt), "cls": str(int(label)).encode()})
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


_KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def write_folder_shards(
    folder: str | Path,
    out_dir: str | Path,
    shard_size: int = 1000,
    max_side: int | None = None,
    shuffle_seed: int | None = 0,
    progress: Callable[[int, int], None] | None = None,
    class_names: list[str] | None = None,
    file_prefix: str = "",
) -> tuple[list[Path], int]:
    """Write every readable image under ``folder`` into tar shards; returns (shards, skipped unreadable files).

    Labels are class-folder indices when every image sits in a first-level class sub-folder (else -1): into
    ``class_names`` when given (the mapping shared by all splits of a dataset), else into the sorted class
    folders. Each sample also gets a ``<key>.json`` member ``{"file": file_prefix + relative path, "label": id}``
    (the original file); the ``shardindex.json`` records ``class_names`` and names ``samples.jsonl``, one line
    ``{"shard", "key", "file", "label"}`` per sample.
    JPEG / PNG / WebP bytes are stored unchanged; other formats, and every image when ``max_side`` is set
    (central square resized to ``max_side``, as :func:`flexitok.io.images.load_image` does), are re-encoded as
    JPEG (quality 95).
    ``shuffle_seed``: write the files in a seeded random order (None: sorted), so shards mix classes.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist or is not a directory")
    paths = list_images(root)
    if not paths:
        raise DatasetError(f"no images under {root}")
    rel = [p.relative_to(root).parts for p in paths]
    labelled = all(len(r) >= 2 for r in rel)
    classes = (list(class_names) if class_names is not None else sorted({r[0] for r in rel})) if labelled else []
    class_index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({r[0] for r in rel} - set(class_index)) if labelled else []
    if unknown:
        raise DatasetError(f"class folder(s) {', '.join(unknown[:5])} under {root} are not in the class list")
    order = list(range(len(paths)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    writer = _TarShardWriter(out_dir, shard_size, "shard", class_names=classes or None)
    skipped = 0
    try:
        for done, i in enumerate(order):
            path = paths[i]
            if not is_readable_image(path):
                skipped += 1
                continue
            with Image.open(path) as img:
                fmt = _KEEP_FORMATS.get(img.format or "")
                if fmt is not None and max_side is None:
                    files = {fmt: path.read_bytes()}
                else:
                    img.load()
                    out = to_rgb(exif_transpose(img))  # the inference loader's conversion; EXIF is not kept
                    if max_side is not None:
                        out = center_crop_resize(out, (max_side, max_side))
                    files = {"jpg": _encode_image(out, "jpg")}
            label = class_index[rel[i][0]] if classes else -1
            files["cls"] = str(label).encode()
            record = {"file": file_prefix + "/".join(rel[i]), "label": label}
            files["json"] = json.dumps(record).encode()
            writer.add(files, record)
            if progress is not None:
                progress(done + 1, len(order))
        if writer.index == 0:
            raise DatasetError(f"none of the {len(paths)} images under {root} could be read")
        return writer.finish(), skipped
    except BaseException:
        writer.abort()
        raise
