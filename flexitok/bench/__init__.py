"""Benchmarks: tokenizer throughput (:mod:`.tokenizer`), two revisions side by side (:mod:`.compare`) and AR
generation with and without the KV cache (:mod:`.generator`). All take dataclass configs; the CLI in
``flexitok.cli.bench`` / ``flexitok.cli.bench_generator`` only parses flags into them."""

from flexitok.bench.compare import CompareConfig, CompareReport, run_comparison
from flexitok.bench.generator import GeneratorBenchConfig, GeneratorBenchResult, run_generator_benchmark
from flexitok.bench.session import PHASES, MemoryProbe, SessionSpec, count_flops, matmul_peak, synchronize
from flexitok.bench.tokenizer import BenchConfig, BenchReport, PhaseStats, run_benchmark

__all__ = [
    "PHASES",
    "BenchConfig",
    "BenchReport",
    "CompareConfig",
    "CompareReport",
    "GeneratorBenchConfig",
    "GeneratorBenchResult",
    "MemoryProbe",
    "PhaseStats",
    "SessionSpec",
    "count_flops",
    "matmul_peak",
    "run_benchmark",
    "run_comparison",
    "run_generator_benchmark",
    "synchronize",
]
