"""Benchmarks: tokenizer throughput (:mod:`.tokenizer`), two revisions side by side (:mod:`.compare`) and AR
generation with and without the KV cache (:mod:`.generator`). All take dataclass configs; the CLI in
``flexitok.cli.bench`` only parses flags into them."""

from flexitok.bench.compare import CompareConfig, CompareReport, run_comparison
from flexitok.bench.session import PHASES, BenchConfig, MemoryProbe, count_flops, matmul_peak, synchronize
from flexitok.bench.tokenizer import BenchReport, PhaseStats, run_benchmark

__all__ = [
    "PHASES",
    "BenchConfig",
    "BenchReport",
    "CompareConfig",
    "CompareReport",
    "MemoryProbe",
    "PhaseStats",
    "count_flops",
    "matmul_peak",
    "run_benchmark",
    "run_comparison",
    "synchronize",
]
