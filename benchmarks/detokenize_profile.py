"""Where one detokenize call spends its time, and how much faster it could get without faster kernels.

    python benchmarks/detokenize_profile.py --preset d12-d12 --threads 2

One eager detokenize (``--steps`` Euler steps with guidance 7.5 + APG, then the VAE decoder) on one image, after
a warm-up call, under ``torch.profiler``. Ops are grouped into kernel classes: matmuls (``mm``/``addmm``/``bmm``),
convolutions (the VAE decoder), attention (SDPA) and everything else (norms, activations, modulation, copies,
the sampler). For the first three it prints the FLOP/s (FLOPs from ``torch.utils.flop_counter``) against the
fp32 matmul peak measured in the same process, and it prints the *ceiling*: the speed-up if everything else took
no time at all, the most that removing overhead around the kernels can give.

``--split-rows`` also times one decoder pass on ``[cond; uncond]`` two ways, interleaved: as one batch with
``--threads`` intra-op threads, and as two one-row batches run concurrently in two Python threads with one
intra-op thread each (the outputs agree within float32 rounding); an experiment, not a library path.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from flexitok.bench.session import Session, SessionSpec, flop_counter, matmul_peaks

KERNELS = {
    "aten::mm": "matmul",
    "aten::addmm": "matmul",
    "aten::bmm": "matmul",
    "aten::mkldnn_convolution": "convolution",
    "aten::convolution": "convolution",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
    "aten::_scaled_dot_product_flash_attention": "attention",
}
FLOP_OPS = {"matmul": ("mm", "addmm", "bmm"), "convolution": ("convolution",), "attention": ("_scaled_dot",)}


def kernel_class(name: str) -> str:
    return KERNELS.get(name, "other")


def flops_by_class(fn: Callable[[], object]) -> dict[str, float]:
    """FLOPs of ``fn()`` per kernel class."""
    with flop_counter() as fc:
        fn()
    out: dict[str, float] = defaultdict(float)
    for op, n in fc.get_flop_counts()["Global"].items():
        name = str(op)
        for cls, keys in FLOP_OPS.items():
            if any(k in name for k in keys):
                out[cls] += n
                break
    return out


def split_rows(s: Session, threads: int, rounds: int) -> None:
    dec = s.model.decoder
    x, t, c = s.pass_x, s.pass_t, s.pass_cond

    def joint() -> torch.Tensor:
        return dec(x, t, c)

    def split() -> torch.Tensor:
        outs: list[torch.Tensor | None] = [None, None]

        def work(i: int) -> None:
            with torch.inference_mode():
                outs[i] = dec(x[i : i + 1], t[i : i + 1], c[i : i + 1])

        torch.set_num_threads(1)
        worker = threading.Thread(target=work, args=(1,))
        worker.start()
        work(0)
        worker.join()
        torch.set_num_threads(threads)
        return torch.cat([o for o in outs if o is not None])

    with torch.inference_mode():
        diff = float((joint() - split()).abs().max())
        times: dict[str, list[float]] = {f"one batch, {threads} threads": [], "two rows, 1 thread each": []}
        for _ in range(rounds):
            for ts, fn in zip(times.values(), (joint, split), strict=True):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
    flops = s.flops("decoder_pass")
    peak, _ = matmul_peaks(torch.device("cpu"), "fp32")
    print(f"\none decoder pass on [cond; uncond], {rounds} interleaved rounds, max |diff| {diff:.1e}:")
    for name, ts in times.items():
        best = min(ts)
        print(
            f"  {name:<26} min {best:.3f} s  median {statistics.median(ts):.3f} s  "
            f"{flops / best / 1e9:.1f} GFLOP/s = {flops / best / peak:.1%} of peak ({peak / 1e9:.1f} GFLOP/s)"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="d12-d12")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--split-rows", type=int, default=0, metavar="ROUNDS", help="also run the split experiment")
    args = p.parse_args(argv)
    decode = {"steps": args.steps, "guidance_scale": 7.5, "apg": True}
    s = Session(SessionSpec(model=args.preset, batch_size=1, device="cpu", threads=args.threads, decode=decode))
    s.run("detokenize")  # warm-up
    flops = flops_by_class(lambda: s.run("detokenize"))
    wall, _ = s.run("detokenize")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        profiled, _ = s.run("detokenize")
    peak, _ = matmul_peaks(torch.device("cpu"), "fp32")
    secs: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        secs[kernel_class(ev.key)] += ev.self_cpu_time_total / 1e6
    total = sum(secs.values())
    print(
        f"{args.preset} detokenize, batch 1, {args.steps} Euler steps, guidance 7.5 + APG, fp32, {args.threads} "
        f"threads: {wall:.2f} s unprofiled, {profiled:.2f} s profiled; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    print(f"{'kernel class':<14}{'seconds':>9}{'share':>8}{'GFLOP':>9}{'GFLOP/s':>9}{'of peak':>9}")
    for cls in ("matmul", "convolution", "attention", "other"):
        rate = flops.get(cls, 0.0) / secs[cls] if secs[cls] > 0 and cls in flops else None
        cells = f"{flops[cls] / 1e9:>9.0f}{rate / 1e9:>9.1f}{rate / peak:>9.1%}" if rate else f"{'':>27}"
        print(f"{cls:<14}{secs[cls]:>9.2f}{secs[cls] / total:>8.1%}{cells}")
    kernels = total - secs["other"]
    print(f"ceiling with 'other' at zero cost: {total / kernels:.3f}x (kernels alone take {kernels:.2f} s)")
    if args.split_rows:
        split_rows(s, args.threads, args.split_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
