"""Row-parallel decoder passes (flexitok.sampling.row_parallel, FlexTok.enable_row_parallel)."""

from __future__ import annotations

import threading

import pytest
import torch

from flexitok import DecodeConfig
from flexitok.bench import BenchConfig, run_benchmark
from flexitok.config import tiny_config
from flexitok.errors import InvalidInputError
from flexitok.models.flextok import FlexTok
from flexitok.sampling.row_parallel import RowParallel


@pytest.fixture(scope="module")
def model() -> FlexTok:
    torch.manual_seed(0)
    return FlexTok(tiny_config()).eval()


def test_detokenize_row_parallel_matches_the_batched_pass_and_restores_threads(model: FlexTok) -> None:
    images = torch.rand(3, 3, *model.image_size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    tokens = model.tokenize(images)
    noise = model.initial_noise(3, torch.Generator().manual_seed(2))
    decode = DecodeConfig(steps=3, guidance_scale=3.0)
    threads = torch.get_num_threads()
    ref = model.detokenize(tokens, decode, noise=noise, keep_k=[1, 2, 4])
    try:
        out = model.enable_row_parallel(2).detokenize(tokens, decode, noise=noise, keep_k=[1, 2, 4])
    finally:
        model.disable_row_parallel()
    assert torch.get_num_threads() == threads
    assert (out - ref).abs().max() < 1e-5
    assert model.row_workers is None and model.decoder_velocity() is model.decoder


def test_rows_keep_their_order_and_each_chunk_gets_one_thread() -> None:
    seen: list[tuple[str, int, bool, bool]] = []
    lock = threading.Lock()

    def fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        with lock:
            seen.append(
                (threading.current_thread().name, torch.get_num_threads(), torch.is_grad_enabled(), x.requires_grad)
            )
        return x * t[:, None] + c

    x, t, c = torch.arange(10.0).reshape(5, 2), torch.arange(5.0), torch.ones(5, 2)
    with torch.no_grad():
        out = RowParallel(fn, 3)(x, t, c)
    assert torch.equal(out, x * t[:, None] + c)
    assert len(seen) == 3 and len({name for name, *_ in seen}) == 3  # three chunks, three threads
    assert all(n == 1 for _, n, _, _ in seen)
    assert not any(grad for _, _, grad, _ in seen)  # the caller's no_grad holds in the workers too


def test_an_error_in_a_worker_reaches_the_caller_and_threads_are_restored() -> None:
    def fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if t[0] > 0:  # the second chunk, in a worker thread
            raise ValueError("boom in a worker")
        return x

    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match="boom in a worker"):
        RowParallel(fn, 2)(torch.zeros(2, 1), torch.tensor([0.0, 1.0]), torch.zeros(2, 1))
    assert torch.get_num_threads() == threads


def test_one_row_or_one_worker_is_a_plain_call() -> None:
    calls: list[str] = []

    def fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        calls.append(threading.current_thread().name)
        return x

    RowParallel(fn, 4)(torch.zeros(1, 2), torch.zeros(1), torch.zeros(1, 2))
    RowParallel(fn, 1)(torch.zeros(3, 2), torch.zeros(3), torch.zeros(3, 2))
    assert calls == [threading.current_thread().name] * 2


@pytest.mark.parametrize("workers", [0, -1, 1.5, "2", True])
def test_bad_worker_counts_are_refused(model: FlexTok, workers: object) -> None:
    with pytest.raises(InvalidInputError, match="workers"):
        model.enable_row_parallel(workers)  # type: ignore[arg-type]
    assert model.row_workers is None


def test_bench_reports_row_parallel_runs() -> None:
    cfg = BenchConfig(
        model="tiny",
        batch_size=1,
        device="cpu",
        resolution=16,
        peak_size=64,
        repeats=1,
        threads=2,
        row_parallel=True,
        phases=("decoder_pass",),
        decode=DecodeConfig(steps=1),
    )
    report = run_benchmark(cfg)
    assert "row-parallel" in report.format_table().splitlines()[0]
    assert report.phases["decoder_pass"].seconds_per_batch > 0
