"""Two revisions of flexitok timed side by side in one run, interleaved, on identical inputs and weights.

::

    from flexitok.bench import BenchConfig, CompareConfig, run_comparison
    report = run_comparison(CompareConfig(rev="9b29af3", bench=BenchConfig(model="d12-d12", batch_size=1)))

Decoder settings other than the official sampler's exist only in revisions that have them (the worker of an
older revision refuses them).
    print(report.format_table())

``rev`` is extracted with ``git archive`` into a temporary folder; the other side is the running package (its
working tree, uncommitted changes included) or a second revision ``base``. Each side runs
:mod:`flexitok.bench.session` (this revision's file, so both sides are timed by the same code) in its own Python
subprocess that imports only its own package. The parent sends one request at a time, so the two never run at
once: every round times each phase once on each side, alternating which side goes first, and the matmul peak is
re-measured on both sides every round. Outputs (tokens, images, velocities) of the last round are compared.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flexitok.bench.session import PROTOCOL_PREFIX
from flexitok.bench.tokenizer import BenchConfig, describe_decode
from flexitok.errors import InvalidInputError

SESSION_FILE = Path(__file__).with_name("session.py")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding this revision's flexitok/


@dataclass
class CompareConfig:
    """``rev``: the revision to compare against; ``base``: the other side (None: the running package).
    ``repo``: the git checkout to take revisions from (default: the one holding the running package).
    ``bench.repeats`` is the number of interleaved rounds."""

    rev: str
    bench: BenchConfig = dataclasses.field(default_factory=BenchConfig)
    base: str | None = None
    repo: str | None = None


@dataclass
class SideStats:
    min_seconds: float
    median_seconds: float
    gflops: float
    fraction_of_peak: float  # from the median
    peak_memory_mib: float
    busy_median_seconds: float  # CPU time / threads (CPU runs)
    fraction_of_peak_busy: float  # from busy_median_seconds and the busy matmul peak


@dataclass
class PhaseComparison:
    phase: str
    base: SideStats
    rev: SideStats
    speedup_min: float  # rev min seconds / base min seconds (> 1: base is faster)
    speedup_median: float
    speedup_paired_median: float  # median over rounds of the per-round ratio
    max_abs_diff: float  # between the two sides' outputs of the last round (tokens: count of differing ids)


@dataclass
class CompareReport:
    config: CompareConfig
    base_label: str
    rev_label: str
    base_package: str
    rev_package: str
    device: str
    threads: int
    matmul_peak_gflops: float
    phases: list[PhaseComparison]
    matmul_peak_busy_gflops: float
    row_parallel: dict[str, bool] = field(default_factory=dict)  # per side, when asked: whether it took effect

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format_table(self) -> str:
        c = self.config.bench
        lines = [
            f"{self.base_label} (A) vs {self.rev_label} (B): model {c.model}, batch {c.batch_size}, "
            f"{describe_decode(c.decode)}, {c.dtype}{', compiled' if c.compile else ''}"
            + (
                ", row-parallel " + " ".join(f"{s}:{'on' if on else 'n/a'}" for s, on in self.row_parallel.items())
                if self.row_parallel
                else ""
            )
            + f", device {self.device} "
            f"({self.threads} threads), {c.repeats} interleaved rounds, matmul peak {self.matmul_peak_gflops:.1f} "
            f"GFLOP/s ({self.matmul_peak_busy_gflops:.1f} busy)",
            f"{'phase':<13} {'A min s':>9} {'A med s':>9} {'B min s':>9} {'B med s':>9} {'B/A min':>8} {'B/A med':>8} "
            f"{'paired':>7} {'A peak':>7} {'B peak':>7} {'A busy':>7} {'B busy':>7} {'max |A-B|':>10}",
        ]
        for p in self.phases:
            diff = f"{int(p.max_abs_diff)} ids" if p.phase == "tokenize" else f"{p.max_abs_diff:.2e}"
            lines.append(
                f"{p.phase:<13} {p.base.min_seconds:>9.3f} {p.base.median_seconds:>9.3f} {p.rev.min_seconds:>9.3f} "
                f"{p.rev.median_seconds:>9.3f} {p.speedup_min:>8.3f} {p.speedup_median:>8.3f} "
                f"{p.speedup_paired_median:>7.3f} {p.base.fraction_of_peak:>7.1%} {p.rev.fraction_of_peak:>7.1%} "
                f"{p.base.fraction_of_peak_busy:>7.1%} {p.rev.fraction_of_peak_busy:>7.1%} {diff:>10}"
            )
        lines.append(
            "B/A > 1: A is faster. 'paired' = median of per-round ratios; 'peak' = fraction of the matmul peak "
            "(median time; 'busy': on the CPU-time / threads clock, which other jobs' load does not inflate); "
            "decoder_pass = one decoder forward on [cond; uncond]."
        )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- sources
def _repo_root(repo: str | None) -> Path:
    start = Path(repo) if repo else PACKAGE_ROOT
    res = subprocess.run(["git", "-C", str(start), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if res.returncode != 0:
        raise InvalidInputError(
            f"bench compare needs a git checkout of flexitok; {start} is not one (pass repo=/--repo)"
        )
    return Path(res.stdout.strip())


def _extract(repo: Path, rev: str, dest: Path) -> str:
    """``git archive`` the package of ``rev`` into ``dest``; returns the full commit id."""
    res = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"], capture_output=True)
    if res.returncode != 0:
        raise InvalidInputError(f"unknown git revision {rev!r} in {repo}")
    commit = res.stdout.decode().strip()
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "flexitok"], capture_output=True)
    if archive.returncode != 0:
        raise InvalidInputError(f"cannot extract flexitok at {rev}: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if sys.version_info >= (3, 12):
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)  # noqa: S202 - our own git archive
    return commit


class _Worker:
    """A subprocess running the session file against the package under ``root``."""

    def __init__(self, root: Path, label: str, workdir: Path) -> None:
        self.label = label
        self.log = workdir / f"{label.replace('/', '_')}.stderr.log"
        code = (
            f"import sys; sys.path.insert(0, {str(root)!r}); import runpy; "
            f"runpy.run_path({str(SESSION_FILE)!r}, run_name='__main__')"
        )
        # cwd = an empty folder, so no flexitok/ in the current directory shadows ``root``.
        cwd = workdir / f"cwd-{label.replace('/', '_')}"
        cwd.mkdir()
        self._stderr = open(self.log, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )

    def request(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL_PREFIX):
                reply = json.loads(line[len(PROTOCOL_PREFIX) :])
                if not reply.get("ok"):
                    raise RuntimeError(f"{self.label}: {req.get('op')} failed: {reply.get('error')}")
                return reply
        tail = self.log.read_text()[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"{self.label}: the benchmark worker exited unexpectedly\n{tail}")

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.request(op="quit")
                self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
        finally:
            self._stderr.close()


def _max_diff(phase: str, a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    if phase == "tokenize":
        return float((a != b).sum())
    return float((a - b).abs().max()) if a.numel() else 0.0


def run_comparison(cfg: CompareConfig, progress: Callable[[str], None] | None = None) -> CompareReport:
    """Time ``cfg.bench`` on both sides, interleaved; see the module doc."""
    say = progress or (lambda _msg: None)
    bench = cfg.bench
    repo = _repo_root(cfg.repo)
    with tempfile.TemporaryDirectory(prefix="flexitok-compare-") as tmp:
        tmpdir = Path(tmp)
        rev_root = tmpdir / "rev"
        rev_commit = _extract(repo, cfg.rev, rev_root)
        if cfg.base is None:
            base_root = PACKAGE_ROOT
            base_label = f"working tree {base_root}"
        else:
            base_root = tmpdir / "base"
            base_label = f"{cfg.base} ({_extract(repo, cfg.base, base_root)[:10]})"
        rev_label = f"{cfg.rev} ({rev_commit[:10]})"
        workers = {"A": _Worker(base_root, "A", tmpdir), "B": _Worker(rev_root, "B", tmpdir)}
        try:
            info = {}
            for side, w in workers.items():
                say(f"setting up {side} = {base_label if side == 'A' else rev_label}")
                info[side] = w.request(op="setup", config=bench.spec().to_dict())
            flops: dict[str, dict[str, int]] = {s: {} for s in workers}
            for phase in bench.phases:
                for side, w in workers.items():
                    say(f"{side}: counting {phase} FLOPs (also the first warm-up)")
                    flops[side][phase] = w.request(op="flops", phase=phase)["flops"]
            if bench.compile:
                for w in workers.values():
                    w.request(op="compile")
            row_parallel: dict[str, bool] = {}
            if bench.row_parallel:  # a revision without the option runs as it is (reported)
                for side, w in workers.items():
                    row_parallel[side] = bool(w.request(op="row_parallel")["supported"])
            for phase in bench.phases:
                for _ in range(bench.warmup - (0 if bench.compile else 1)):
                    for w in workers.values():
                        w.request(op="measure", phase=phase, repeats=1)
            seconds: dict[str, dict[str, list[float]]] = {s: {p: [] for p in bench.phases} for s in workers}
            busy: dict[str, dict[str, list[float]]] = {s: {p: [] for p in bench.phases} for s in workers}
            memory: dict[str, dict[str, float]] = {s: dict.fromkeys(bench.phases, 0.0) for s in workers}
            peaks: list[float] = []
            busy_peaks: list[float] = []
            for r in range(bench.repeats):
                order = ["A", "B"] if r % 2 == 0 else ["B", "A"]
                for side in order:
                    reply = workers[side].request(op="peak")
                    peaks.append(reply["flops_per_second"])
                    busy_peaks.append(reply["busy_flops_per_second"])
                for phase in bench.phases:
                    for side in order:
                        reply = workers[side].request(op="measure", phase=phase, repeats=1)
                        seconds[side][phase].extend(reply["seconds"])
                        busy[side][phase].extend(reply["busy_seconds"])
                        memory[side][phase] = max(memory[side][phase], reply["peak_memory_mib"])
                say(
                    f"round {r + 1}/{bench.repeats}: "
                    + ", ".join(f"{p} A {seconds['A'][p][-1]:.3f}s B {seconds['B'][p][-1]:.3f}s" for p in bench.phases)
                )
            outputs = {}
            for side, w in workers.items():
                path = tmpdir / f"out-{side}.pt"
                w.request(op="save", path=str(path))
                outputs[side] = torch.load(path)
        finally:
            for w in workers.values():
                w.close()
    peak, busy_peak = max(peaks), max(busy_peaks)

    def side_stats(side: str, phase: str) -> SideStats:
        s = seconds[side][phase]
        med = statistics.median(s)
        busy_med = statistics.median(busy[side][phase])
        return SideStats(
            min_seconds=min(s),
            median_seconds=med,
            gflops=flops[side][phase] / 1e9,
            fraction_of_peak=flops[side][phase] / med / peak,
            peak_memory_mib=memory[side][phase],
            busy_median_seconds=busy_med,
            fraction_of_peak_busy=flops[side][phase] / busy_med / busy_peak if busy_med > 0 else math.nan,
        )

    phases = []
    for phase in bench.phases:
        a, b = side_stats("A", phase), side_stats("B", phase)
        paired = [tb / ta for ta, tb in zip(seconds["A"][phase], seconds["B"][phase], strict=True)]
        phases.append(
            PhaseComparison(
                phase=phase,
                base=a,
                rev=b,
                speedup_min=b.min_seconds / a.min_seconds,
                speedup_median=b.median_seconds / a.median_seconds,
                speedup_paired_median=statistics.median(paired),
                max_abs_diff=_max_diff(phase, outputs["A"][phase], outputs["B"][phase]),
            )
        )
    return CompareReport(
        config=cfg,
        base_label=base_label,
        rev_label=rev_label,
        base_package=info["A"]["package"],
        rev_package=info["B"]["package"],
        device=info["A"]["device"],
        threads=info["A"]["threads"],
        matmul_peak_gflops=peak / 1e9,
        phases=phases,
        matmul_peak_busy_gflops=busy_peak / 1e9,
        row_parallel=row_parallel,
    )
