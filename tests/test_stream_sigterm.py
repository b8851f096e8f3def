"""A SIGTERM that reaches a DataLoader worker while it starts does not kill it (issue 22.3; a CI flake of the
SIGTERM test): workers start with SIGTERM blocked until their handler is installed."""

from __future__ import annotations

import os
import signal
import time

import pytest
from torch.utils.data import DataLoader

from flexitok.train.stream import _leave_sigterm_to_the_trainer, _start_workers


def _slow_init(worker_id: int) -> None:
    time.sleep(1.0)  # the window in which the worker has torch's handler only
    _leave_sigterm_to_the_trainer(worker_id)


def _loader() -> DataLoader:
    return DataLoader(list(range(4)), batch_size=2, num_workers=1, worker_init_fn=_slow_init)


def test_a_sigterm_during_worker_start_is_left_to_the_trainer() -> None:
    it = _start_workers(_loader())
    os.kill(it._workers[0].pid, signal.SIGTERM)  # type: ignore[attr-defined]
    assert [b.tolist() for b in it] == [[0, 1], [2, 3]]


def test_without_the_block_the_same_signal_kills_the_worker() -> None:
    it = iter(_loader())
    os.kill(it._workers[0].pid, signal.SIGTERM)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="worker"):
        list(it)
