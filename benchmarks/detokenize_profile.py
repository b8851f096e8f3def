"""Where one detokenize call spends its time, and how much faster it could get without faster kernels.

    python benchmarks/detokenize_profile.py --preset d12-d12 --threads 2

One eager detokenize (``--steps`` Euler steps with guidance 7.5 + APG, then the VAE decoder) on one image, after
a warm-up call, under ``torch.profiler``. Ops are grouped into kernel classes: matmuls (``mm``/``addmm``/``bmm``),
convolutions (the VAE decoder), attention (SDPA) and everything else (norms, activations, modulation, copies,
the sampler). For the first three it prints the FLOP/s (FLOPs from ``torch.utils.flop_counter``) against the
fp32 matmul peak measured in the same process, and it prints the *ceiling*: the speed-up if everything else took
no time at all, the most that removing overhead around the kernels can give.

``--split-rows ROUNDS`` also times detokenize and one decoder pass on ``[cond; uncond]`` two ways, interleaved:
as one batch with ``--threads`` intra-op threads, and with ``FlexTok.enable_row_parallel(threads)`` (the rows
split over that many Python threads with one intra-op thread each; outputs agree within float32 rounding).
"""

from __future__ import annotations

import argparse
import statistics
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
    """Detokenize and one decoder pass with and without ``FlexTok.enable_row_parallel``, interleaved."""
    model = s.model
    times: dict[tuple[str, bool], list[float]] = {
        (p, on): [] for p in ("detokenize", "decoder_pass") for on in (False, True)
    }
    outs: dict[tuple[str, bool], torch.Tensor] = {}
    for r in range(rounds):
        for on in (False, True) if r % 2 == 0 else (True, False):
            if on:
                model.enable_row_parallel(threads)
            else:
                model.disable_row_parallel()
            for phase in ("detokenize", "decoder_pass"):
                seconds, _ = s.run(phase)
                times[phase, on].append(seconds)
                outs[phase, on] = s.outputs[phase]
    model.disable_row_parallel()
    peak, _ = matmul_peaks(torch.device("cpu"), "fp32")
    print(f"\nrow-parallel ({threads} workers of 1 thread) against one batch on {threads} threads, {rounds} rounds:")
    for phase in ("detokenize", "decoder_pass"):
        flops = s.flops(phase)
        diff = float((outs[phase, True] - outs[phase, False]).abs().max())
        t_off, t_on = times[phase, False], times[phase, True]
        print(
            f"  {phase}: max |diff| {diff:.1e}; speed-up min {min(t_off) / min(t_on):.3f}, "
            f"median {statistics.median(t_off) / statistics.median(t_on):.3f}"
        )
        for label, ts in (("one batch", t_off), ("row-parallel", t_on)):
            best = min(ts)
            print(
                f"    {label:<13} min {best:.3f} s  median {statistics.median(ts):.3f} s  "
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
