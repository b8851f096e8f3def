"""Evaluate a batched model call with its rows split across CPU worker threads, one intra-op thread each.

On a CPU with few cores, one decoder pass over ``[cond; uncond]`` spread over all cores by torch's intra-op
threads loses time in the small ops that do not split well (attention on one image, the adaLN matmul,
norms). Giving every core its own rows and one intra-op thread keeps each core busy on full-size matmuls. On
the 2-core development machine one d12-d12 decoder pass on ``[cond; uncond]`` ran at 86% of the fp32 matmul
peak this way, against 73% as one batch on 2 threads (docs/performance.md). The rows are computed separately,
so outputs agree with the batched call within float32 rounding, not bit for bit.

An execution setting, not a sampler setting: it is not part of :class:`~flexitok.sampling.decode.DecodeConfig`,
so it does not enter the fingerprint of a .ftok file. Torch's intra-op thread count is process-wide, so other
threads that run torch at the same time also see one thread while a call is in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import Tensor

from flexitok.errors import InvalidInputError

RowFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def check_workers(workers: int) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidInputError(f"row-parallel workers must be an int >= 1, got {workers!r}")
    return workers


class RowParallel:
    """``fn(x [B, ...], t [B], cond [B, ...]) -> [B, ...]`` with the B rows split into ``workers`` chunks.

    Each chunk runs in its own thread with one intra-op thread (the calling thread takes the first chunk); the
    thread count, grad mode and inference mode of the caller are restored or mirrored. With one worker, one
    row, or a tensor off the CPU it is ``fn`` itself.
    """

    def __init__(self, fn: RowFn, workers: int) -> None:
        self.fn = fn
        self.workers = check_workers(workers)

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        n = min(self.workers, x.shape[0])
        if n <= 1 or x.device.type != "cpu":
            return self.fn(x, t, cond)
        chunks = list(zip(x.tensor_split(n), t.tensor_split(n), cond.tensor_split(n), strict=True))
        outs: list[Tensor | None] = [None] * n
        errors: list[BaseException] = []
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def work(i: int) -> None:
            try:
                # Grad and inference mode are thread-local: mirror the caller's (the trunk's fast path needs them).
                with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                    outs[i] = self.fn(*chunks[i])
            except BaseException as e:  # re-raised in the caller
                errors.append(e)

        previous = torch.get_num_threads()
        # Set before the workers start: a new thread takes torch's thread count when it first runs a parallel op.
        torch.set_num_threads(1)
        try:
            threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(1, n)]
            for th in threads:
                th.start()
            work(0)
            for th in threads:
                th.join()
        finally:
            torch.set_num_threads(previous)
        if errors:
            raise errors[0]
        return torch.cat([o for o in outs if o is not None])
