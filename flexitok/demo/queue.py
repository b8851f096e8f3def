"""Admission for the demo's heavy work (decoding images, model calls): a bounded queue in front of a fixed set of
worker threads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flexitok.demo.errors import Busy


class WorkQueue:
    """``workers`` threads run the work, ``max_queue`` more requests wait (at most ``timeout_s``).

    :meth:`run` admits a request (cheap, on the event loop) or raises :class:`Busy` at once when workers and
    queue are full, so an overloaded server answers 503 instead of piling up requests; it then runs the work on
    one of the ``workers`` threads. Take a place only for work that is ready to run (a request body is read
    before, never while holding a place). A fixed, small set of threads also bounds memory: each thread's
    allocator keeps some of what it freed, and a decoded photo is tens of MB.
    """

    def __init__(self, workers: int, max_queue: int, timeout_s: float) -> None:
        self.capacity, self.timeout_s = workers + max_queue, timeout_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flexitok-demo")
        self._lock = threading.Lock()
        self.admitted = 0  # running + waiting

    def check(self) -> None:
        """Raise :class:`Busy` when full right now (a hint taken before reading a body; :meth:`run` decides)."""
        if self.admitted >= self.capacity:
            raise Busy("the server is busy (all workers and queue places are taken); try again shortly")

    def _admit(self) -> None:
        with self._lock:
            self.check()
            self.admitted += 1

    def _leave(self) -> None:
        with self._lock:
            self.admitted -= 1

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Admit (or :class:`Busy`), then ``fn(*args)`` on a worker thread once one is free."""
        self._admit()
        try:
            queued = time.monotonic()

            def job() -> Any:
                if time.monotonic() - queued > self.timeout_s:
                    raise Busy(f"the server is busy (no worker became free within {self.timeout_s:g} s); try again")
                return fn(*args)

            return await asyncio.wrap_future(self._pool.submit(job))
        finally:
            self._leave()
