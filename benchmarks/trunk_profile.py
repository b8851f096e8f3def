"""Where one decoder trunk pass spends its time: a torch.profiler breakdown by op, with each op's share of the
pass and, for matmuls and attention, its FLOP/s against the matmul peak (the reason behind the pass's fraction
of peak in ``flexitok bench tokenizer``).

    python benchmarks/trunk_profile.py --preset d12-d12 --threads 1

One eager inference pass on ``[cond; uncond]`` for ``--batch-size`` images (random weights, as the benchmark),
after ``--warmup`` untimed passes. The profiler clocks ops by wall time; on a machine shared with other jobs the
shares stay meaningful (every op is slowed alike on average) but absolute times do not, so the table also gives
the pass's busy time (CPU time / threads, see :mod:`flexitok.bench.session`).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from flexitok.bench.session import Session, SessionSpec, busy_clock, matmul_peaks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="d12-d12")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed passes on the busy clock (best counts)")
    p.add_argument("--top", type=int, default=14, help="ops to list")
    args = p.parse_args(argv)
    s = Session(SessionSpec(model=args.preset, batch_size=args.batch_size, device="cpu", threads=args.threads))
    for _ in range(args.warmup):
        s.run("decoder_pass")
    flops = s.flops("decoder_pass")
    busy = min(s.run("decoder_pass")[1] for _ in range(args.repeats))
    _, peak = matmul_peaks(torch.device("cpu"), "fp32")
    print(
        f"{args.preset} decoder pass on [cond; uncond], batch {args.batch_size}, {torch.get_num_threads()} threads: "
        f"{flops / 1e9:.1f} GFLOP in {busy:.3f} busy s = {flops / busy / 1e9:.1f} GFLOP/s; matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s (busy); fraction of peak {flops / busy / peak:.1%}"
    )
    with (
        torch.inference_mode(),
        profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof,
    ):
        c0 = busy_clock()
        s._call("decoder_pass")
        prof_busy = busy_clock() - c0
    rows: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # self us, flops, calls
    for e in prof.key_averages(group_by_input_shape=True):
        r = rows[f"{e.key} {list(e.input_shapes)[:2]}" if e.key in ("aten::mm", "aten::addmm") else e.key]
        r[0] += e.self_cpu_time_total
        r[1] += e.flops or 0
        r[2] += e.count
    attn = [k for k in rows if "scaled_dot_product" in k]  # the dispatcher op and the kernel under it
    if attn:  # the profiler counts no attention FLOPs: the rest of the benchmark's count is the kernel's
        kernel = max(attn, key=lambda k: rows[k][0])
        rows[kernel][1] = flops - sum(r[1] for r in rows.values())
    total = sum(r[0] for r in rows.values())
    scale = prof_busy / (total / 1e6)  # profiler wall time -> busy time (other jobs' time slices removed)
    print(f"profiled pass: {total / 1e6:.3f} s of op self time on the wall clock, {prof_busy:.3f} busy s")
    print(f"{'op (input shapes)':<60} {'calls':>6} {'share':>7} {'busy GFLOP/s':>13} {'of peak':>8}")
    for key, (us, fl, n) in sorted(rows.items(), key=lambda kv: -kv[1][0])[: args.top]:
        rate = fl / (us / 1e6 * scale) if us and fl else 0.0
        frac = f"{rate / peak:>8.1%}" if fl else f"{'':>8}"
        print(f"{key[:60]:<60} {int(n):>6} {us / total:>7.1%} {rate / 1e9:>13.1f} {frac}")
    mm = sum(r[0] for k, r in rows.items() if k.startswith(("aten::mm", "aten::addmm"))) / total
    at = sum(rows[k][0] for k in attn) / total
    print(
        f"time shares: matmuls {mm:.1%}, attention {at:.1%}, everything else (norms, modulation, copies) "
        f"{1 - mm - at:.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
