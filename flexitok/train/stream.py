"""The resumable batch stream: seeded per-epoch order, per-sample RNG seeds, a position that checkpoints.

Every sample gets RNG seeds derived from (seed, epoch, position) and each epoch's order is a seeded permutation,
so the data a run sees is a pure function of the :class:`~flexitok.train.checkpointing.state.TrainState` position: a resumed run
continues with exactly the batches (and augmentations) the uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
import random
import signal
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from flexitok.errors import InvalidInputError
from flexitok.train.checkpointing.state import TrainState


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (mod 2**32, its limit) and torch's (mod 2**64, its limit) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed % 2**64)


def _leave_sigterm_to_the_trainer(worker_id: int) -> None:
    """A DataLoader worker outlives the first SIGTERM (a scheduler signals every process of a job): the trainer
    stops at an update boundary and shuts its workers down (a worker dying first would fail the loader
    mid-checkpoint). A second SIGTERM (the loader's own terminate of a stuck worker) ends it as usual."""

    def first(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, first)
    # The worker started with SIGTERM blocked (see _start_workers): one that arrived meanwhile is delivered now,
    # to the handler above, instead of killing the worker before this function ran.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _start_workers(loader: DataLoader) -> Iterator[Any]:
    """``iter(loader)`` with SIGTERM blocked while its worker processes start, so that they inherit the block
    until :func:`_leave_sigterm_to_the_trainer` has installed their handler (torch's own worker handler, set
    first, dies on a SIGTERM that is not from the parent). Here the signal waits and then reaches the trainer."""
    if loader.num_workers == 0 or threading.current_thread() is not threading.main_thread():
        return iter(loader)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _item_seed(seed: int, epoch: int, index: int) -> int:
    # A 63-bit mix (splitmix-style) so nearby (epoch, index) pairs get unrelated seeds.
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    return x & (2**63 - 1)


class ResumableSampler(Sampler[tuple[int, int]]):
    """Per-epoch seeded permutation, split across ranks, starting at a given per-rank offset.

    Yields ``(item_seed, dataset_index)`` so :class:`SeededDataset` can make each item's augmentation a pure
    function of (seed, epoch, position): the same sample gets the same crop in a resumed run.
    """

    def __init__(self, n: int, seed: int, rank: int, world_size: int) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def per_rank(self) -> int:
        return math.ceil(self.n / self.world)

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def indices(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**64)
        perm = torch.randperm(self.n, generator=g).tolist()
        total = self.per_rank() * self.world
        perm = (perm * math.ceil(total / self.n))[:total]  # pad by wrapping so every rank gets the same count
        return perm[self.rank :: self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self.indices(self.epoch)
        for pos in range(self.start, len(mine)):
            yield _item_seed(self.seed, self.epoch, pos * self.world + self.rank), mine[pos]

    def __len__(self) -> int:
        return self.per_rank() - self.start


class SeededDataset(Dataset):
    """Wraps a dataset so ``ds[(seed, i)]`` runs ``base[i]`` under fixed torch/numpy/python RNG seeds.

    The caller's RNG states are restored afterwards, so with ``num_workers=0`` data loading does not perturb the
    training RNG stream either.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        seed, index = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            seed_everything(seed)
            try:
                return self.base[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_len(batch: Any) -> int:
    """Number of samples in a (nested) batch: the leading size of its first tensor."""
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        for v in batch.values():
            if isinstance(v, Tensor):
                return v.shape[0]
    if isinstance(batch, (list, tuple)) and batch:
        return batch_len(batch[0])
    return 0


class BatchStream:
    """Endless per-process batches of ``batch_size``; reads and advances ``state.epoch`` / ``state.index``.

    Map-style datasets go through :class:`ResumableSampler` + :class:`SeededDataset` (exact resume). Streaming
    (iterable) datasets shard by rank/worker themselves; resume skips the consumed batches of the epoch, which
    is exact when the stream is deterministic per epoch (``set_epoch`` is called when the dataset has it).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        state: TrainState,
        *,
        seed: int,
        rank: int,
        world_size: int,
        num_workers: int = 0,
        collate_fn: Callable | None = None,
        pin_memory: bool = False,
    ) -> None:
        self.dataset, self.batch_size, self.state = dataset, batch_size, state
        self.rank, self.world_size = rank, world_size
        self.seed, self.num_workers, self.collate_fn, self.pin_memory = seed, num_workers, collate_fn, pin_memory
        self.iterable = isinstance(dataset, IterableDataset)
        n = 0 if self.iterable else len(dataset)  # type: ignore[arg-type]
        self.sampler = ResumableSampler(max(n, 1), seed, rank, world_size)
        if not self.iterable and self.sampler.per_rank() < batch_size:
            raise InvalidInputError(
                f"the dataset has {n} items: fewer than one batch of {batch_size} per process ({world_size} processes)"
            )
        self.batches_per_epoch = self.sampler.per_rank() // batch_size
        self._it = self._iterable_batches() if self.iterable else self._indexed_batches()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self._it)

    def close(self) -> None:
        """Shut the DataLoader workers down now (a clean stop, not at interpreter exit)."""
        self._it.close()

    def _loader(self, dataset: Dataset, generator_seed: int, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(generator_seed % 2**64),  # keeps the global RNG untouched
            worker_init_fn=_leave_sigterm_to_the_trainer if self.num_workers > 0 else None,
        )

    def _indexed_batches(self) -> Generator[Any, None, None]:
        s, epoch_items = self.state, self.batches_per_epoch * self.batch_size
        seeded = SeededDataset(self.dataset)
        while True:
            if s.index >= epoch_items:
                s.epoch, s.index = s.epoch + 1, 0
            self.sampler.set_position(s.epoch, s.index)
            for b in _start_workers(self._loader(seeded, self.seed, self.sampler)):
                s.index += self.batch_size
                yield b
                if s.index >= epoch_items:
                    break

    def _iterable_batches(self) -> Generator[Any, None, None]:
        s = self.state
        while True:
            set_epoch = getattr(self.dataset, "set_epoch", None)  # optional protocol of streaming datasets
            if set_epoch is not None:
                set_epoch(s.epoch)
            set_rank = getattr(self.dataset, "set_rank", None)  # split shards by this process group
            if set_rank is not None:
                set_rank(self.rank, self.world_size)
            skip = s.index // self.batch_size
            got = False
            skip_batches = getattr(self.dataset, "skip_batches", None)  # the dataset skips without decoding
            if skip_batches is not None:
                skip_batches(skip, self.batch_size, self.num_workers)
                got, skip = skip > 0, 0
            for i, b in enumerate(_start_workers(self._loader(self.dataset, self.seed + s.epoch))):
                got = True
                if i < skip:
                    continue
                s.index += self.batch_size
                yield b
            if not got:
                raise InvalidInputError("the streaming dataset yielded no full batch")
            s.epoch, s.index = s.epoch + 1, 0
