"""A graceful stop on SIGTERM, what SLURM and other schedulers send some time before they kill a job.

The design: SIGTERM only sets a flag. The trainer finishes the update in progress, then (at that step boundary)
writes a checkpoint unless one was just written for this step, and stops with :class:`TrainingStopped` (the CLI
prints it and exits with :data:`EXIT_STOPPED`, 75 = ``EX_TEMPFAIL``: "try again", i.e. rerun with ``--resume``).
The time from the signal to the exit is therefore at most one update plus one checkpoint write: give the
scheduler's grace period room for both (SLURM: ``#SBATCH --signal=TERM@120`` sends SIGTERM 120 s before the
time limit; torchrun forwards SIGTERM to its workers and kills them 30 s later). A second SIGTERM stops at once,
without a checkpoint (the previous one stays intact: writes are atomic).

Under several processes the flag is combined over all ranks at every update (one tiny all-reduce on a Gloo group,
no device sync), so every rank stops at the same step and the checkpoint is collective as usual.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.distributed as dist

from flexitok.errors import TrainingStopped
from flexitok.train.parallel import DistInfo

EXIT_STOPPED = TrainingStopped.exit_code

__all__ = ["EXIT_STOPPED", "StopOnSigterm", "TrainingStopped"]


class StopOnSigterm:
    """Context manager around the training loop: SIGTERM -> :meth:`requested` becomes true (collective)."""

    def __init__(self, info: DistInfo) -> None:
        self.info = info
        self.received = False
        self._previous: Any = None
        self._installed = False
        self._group: Any = None

    def __enter__(self) -> StopOnSigterm:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        if self.info.enabled and dist.get_backend() != "gloo":
            self._group = dist.new_group(backend="gloo")  # a CPU flag: no device sync per update
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received:  # the second one: stop now (the default action), no checkpoint
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.received = True  # no printing here: the handler may interrupt a write to the same stream

    def requested(self) -> bool:
        """True on every rank when any rank has received SIGTERM (a collective under several processes)."""
        if not self.info.enabled:
            return self.received
        flag = torch.tensor([1 if self.received else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())
