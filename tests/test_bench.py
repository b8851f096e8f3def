"""The tokenizer benchmark: report contents (not timings), config handling and the CLI wrapper."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from flexitok import DecodeConfig
from flexitok.bench import BenchConfig, bench_config_for, run_benchmark
from flexitok.cli.main import main
from flexitok.config import tiny_config
from flexitok.errors import InvalidInputError
from flexitok.models.flextok import FlexTok


def _assert_phase_ok(stats) -> None:
    for value in (stats.seconds_per_batch, stats.images_per_second, stats.seconds_per_image, stats.peak_memory_mib):
        assert math.isfinite(value) and value > 0
    assert math.isfinite(stats.memory_increase_mib) and stats.memory_increase_mib >= 0
    assert stats.memory_increase_mib <= stats.peak_memory_mib


def test_run_benchmark_tiny_reports_positive_finite_numbers() -> None:
    decode = DecodeConfig(steps=1)
    cfg = BenchConfig(model="tiny", batch_size=2, decode=decode, device="cpu", warmup=1, repeats=2, resolution=16)
    report = run_benchmark(cfg)
    _assert_phase_ok(report.tokenize)
    _assert_phase_ok(report.detokenize)
    assert report.image_size == (16, 16) and report.n_registers == 16 and report.device == "cpu"
    assert report.parameters == sum(p.numel() for p in FlexTok(tiny_config(image_size=16)).parameters())
    for phase in (report.tokenize, report.detokenize):
        assert phase.images_per_second == pytest.approx(2 / phase.seconds_per_batch)
        assert phase.seconds_per_image == pytest.approx(phase.seconds_per_batch / 2)
    table = report.format_table()
    assert "tokenize" in table and "detokenize" in table and "images/s" in table
    assert json.loads(json.dumps(report.to_dict()))["config"]["decode"]["steps"] == 1


def test_bench_bf16_runs() -> None:
    report = run_benchmark(
        BenchConfig(
            model="tiny", batch_size=1, decode=DecodeConfig(steps=1), device="cpu", dtype="bf16", warmup=0, repeats=1
        )
    )
    _assert_phase_ok(report.detokenize)


def test_bench_config_validation_and_presets(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="steps"):
        BenchConfig(decode=DecodeConfig(steps=0))
    with pytest.raises(InvalidInputError, match="dtype"):
        BenchConfig(dtype="fp16")  # type: ignore[arg-type]
    cfg = bench_config_for(BenchConfig(model="d12-d12", resolution=128))
    assert cfg is not None and cfg.image_size == (128, 128) and cfg.latent_size == (16, 16)
    assert cfg.vae.diffusers_config is not None and cfg.vae.diffusers_config["latent_channels"] == 16
    assert bench_config_for(BenchConfig(model=str(tmp_path))) is None
    FlexTok(tiny_config()).save_pretrained(tmp_path / "m")
    with pytest.raises(InvalidInputError, match="presets only"):
        run_benchmark(BenchConfig(model=str(tmp_path / "m"), resolution=64, device="cpu"))


def test_bench_cli_prints_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    FlexTok(tiny_config()).save_pretrained(tmp_path / "m")
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "tokenizer",
            "--model",
            str(tmp_path / "m"),
            "--steps",
            "1",
            "--batch-size",
            "1",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--device",
            "cpu",
            "--guidance-scale",
            "1",
            "--json",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "detokenize" in captured.out and "guidance off" in captured.out
    data = json.loads(out.read_text())
    assert data["detokenize"]["images_per_second"] > 0 and data["image_size"] == [32, 32]
    with pytest.raises(SystemExit) as info:  # argparse rejects a non-positive step count
        main(["bench", "tokenizer", "--preset", "tiny", "--steps", "0"])
    assert info.value.code == 2 and "positive integer" in capsys.readouterr().err
