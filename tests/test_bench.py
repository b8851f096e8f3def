"""The benchmarks: report contents (not timings), FLOP counts, the worker protocol, compare mode and the CLI."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch

from flexitok import DecodeConfig
from flexitok.bench import BenchConfig, CompareConfig, count_flops, run_benchmark, run_comparison
from flexitok.bench.generator import GeneratorBenchConfig, run_generator_benchmark
from flexitok.bench.session import PROTOCOL_PREFIX, Session, SessionSpec, detokenize_call, model_config, serve
from flexitok.cli.main import main
from flexitok.config import tiny_config
from flexitok.errors import InvalidInputError
from flexitok.models.flextok import FlexTok

FAST = dict(model="tiny", batch_size=2, device="cpu", warmup=1, repeats=2, resolution=16, peak_size=64)
SPEC = dict(model="tiny", batch_size=2, device="cpu", resolution=16, peak_size=64, decode={"steps": 1})


def _assert_phase_ok(stats) -> None:
    for value in (stats.seconds_per_batch, stats.images_per_second, stats.seconds_per_image, stats.peak_memory_mib):
        assert math.isfinite(value) and value > 0
    assert 0 < stats.min_seconds_per_batch <= stats.seconds_per_batch
    assert math.isfinite(stats.memory_increase_mib) and stats.memory_increase_mib >= 0
    assert stats.memory_increase_mib <= stats.peak_memory_mib
    assert stats.gflops > 0 and stats.fraction_of_peak > 0
    # CPU runs also time each call on the busy clock (CPU time / threads).
    assert stats.busy_seconds_per_batch > 0 and stats.fraction_of_peak_busy > 0


def test_run_benchmark_tiny_reports_positive_finite_numbers() -> None:
    report = run_benchmark(BenchConfig(**FAST, decode=DecodeConfig(steps=1)))
    assert set(report.phases) == {"tokenize", "detokenize", "decoder_pass"}
    for phase in report.phases.values():
        _assert_phase_ok(phase)
        assert phase.images_per_second == pytest.approx(2 / phase.seconds_per_batch)
        assert phase.seconds_per_image == pytest.approx(phase.seconds_per_batch / 2)
    assert report.image_size == (16, 16) and report.n_registers == 16 and report.device == "cpu"
    assert report.parameters == sum(p.numel() for p in FlexTok(tiny_config(image_size=16)).parameters())
    assert report.matmul_peak_gflops > 0 and report.matmul_peak_busy_gflops > 0
    # One guided step is one decoder pass on [cond; uncond]: detokenize with 1 step costs at least that.
    assert report.detokenize.gflops >= report.phases["decoder_pass"].gflops > 0
    table = report.format_table()
    assert "tokenize" in table and "detokenize" in table and "images/s" in table and "of peak" in table
    assert json.loads(json.dumps(report.to_dict()))["config"]["decode"]["steps"] == 1
    assert "1 euler steps, guidance 7.5 (APG), 2 decoder passes/image" in table


def test_flop_count_of_a_decoder_pass_is_the_analytic_count() -> None:
    cfg = tiny_config(image_size=16)
    torch.manual_seed(0)
    dec = FlexTok(cfg).decoder.eval()
    t = cfg.decoder.transformer
    b, p, n = 4, 16, cfg.n_registers  # 4x4 patches of 4x4 pixels, 16 registers
    s, d, hidden = p + n, t.dim, t.hidden
    per_block = 2 * b * s * (4 * d * d + 3 * d * hidden) + 4 * b * s * s * d + 2 * b * d * 12 * d
    embed = 2 * b * p * 48 * d + 2 * b * (256 * d + d * d)  # patch embedding, timestep MLP
    head = 2 * b * d * 2 * d + 2 * b * p * d * 48
    with torch.no_grad():
        flops = count_flops(lambda: dec(torch.randn(b, 3, 16, 16), torch.rand(b), torch.randn(b, n, d)))
    assert flops == t.depth * per_block + embed + head


def test_bench_bf16_runs() -> None:
    report = run_benchmark(
        BenchConfig(**{**FAST, "dtype": "bf16", "warmup": 0, "repeats": 1}, decode=DecodeConfig(steps=1))
    )
    _assert_phase_ok(report.detokenize)


def test_bench_config_validation_and_presets(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="steps"):
        BenchConfig(decode=DecodeConfig(steps=0))
    with pytest.raises(InvalidInputError, match="dtype"):
        BenchConfig(dtype="fp16")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="phases"):
        BenchConfig(phases=("encode",))
    cfg = model_config(SessionSpec(model="d12-d12", resolution=128))
    assert cfg is not None and cfg.image_size == (128, 128) and cfg.latent_size == (16, 16)
    assert cfg.vae.diffusers_config is not None and cfg.vae.diffusers_config["latent_channels"] == 16
    assert model_config(SessionSpec(model=str(tmp_path))) is None
    FlexTok(tiny_config()).save_pretrained(tmp_path / "m")
    with pytest.raises(InvalidInputError, match="presets only"):
        run_benchmark(BenchConfig(model=str(tmp_path / "m"), resolution=64, device="cpu"))


def test_sessions_with_the_same_seed_have_the_same_weights_and_outputs() -> None:
    spec = SessionSpec(**SPEC)
    a, b = Session(spec), Session(spec)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # adaLN-zero layers are randomised too, so the decoder output depends on the tokens.
    assert a.model.decoder.trunk.blocks[0].adaLN_modulation[-1].weight.abs().sum() > 0
    a.run("decoder_pass")
    assert a.outputs["decoder_pass"].abs().sum() > 0


def test_worker_protocol_answers_every_request() -> None:
    requests = [
        {"op": "flops", "phase": "decoder_pass"},  # before setup: an error reply, not a crash
        {"op": "setup", "config": SessionSpec(**SPEC).to_dict()},
        {"op": "flops", "phase": "decoder_pass"},
        {"op": "measure", "phase": "decoder_pass", "repeats": 2},
        {"op": "peak"},
        {"op": "nonsense"},
        {"op": "quit"},
    ]
    out = io.StringIO()
    serve(io.StringIO("\n".join(json.dumps(r) for r in requests) + "\n"), out)
    replies = [json.loads(line[len(PROTOCOL_PREFIX) :]) for line in out.getvalue().splitlines()]
    assert [r["ok"] for r in replies] == [False, True, True, True, True, False, True]
    assert "setup first" in replies[0]["error"] and "nonsense" in replies[5]["error"]
    assert replies[1]["image_size"] == [16, 16] and replies[2]["flops"] > 0
    assert len(replies[3]["seconds"]) == 2 and replies[4]["flops_per_second"] > 0
    assert len(replies[3]["busy_seconds"]) == 2 and all(t > 0 for t in replies[3]["busy_seconds"])
    assert replies[4]["busy_flops_per_second"] > 0


def test_detokenize_call_passes_sampler_options_and_refuses_unknown_ones() -> None:
    session = Session(SessionSpec(**SPEC))
    m, tokens, noise = session.model, session.tokens, session.noise
    with torch.inference_mode():
        heun = detokenize_call(m, tokens, noise, DecodeConfig(steps=2, sampler="heun").to_dict())
        ref = m.detokenize(tokens, DecodeConfig(steps=2, sampler="heun"), noise=noise)
        assert torch.equal(heun, ref)
        with pytest.raises(InvalidInputError, match="no fields"):
            detokenize_call(m, tokens, noise, {"steps": 2, "solver": "rk4"})


def test_compare_rejects_unknown_revisions(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="unknown git revision"):
        run_comparison(CompareConfig(rev="no-such-rev-xyz", bench=BenchConfig(**FAST)))
    with pytest.raises(InvalidInputError, match="git checkout"):
        run_comparison(CompareConfig(rev="HEAD", bench=BenchConfig(**FAST), repo=str(tmp_path)))


@pytest.mark.slow
def test_compare_head_against_the_working_tree_gives_identical_outputs() -> None:
    # Two subprocesses, each importing its own copy of the package: same seed -> same weights -> same outputs.
    cfg = CompareConfig(rev="HEAD", bench=BenchConfig(**{**FAST, "repeats": 2}, decode=DecodeConfig(steps=1)))
    report = run_comparison(cfg)
    assert [p.phase for p in report.phases] == ["tokenize", "detokenize", "decoder_pass"]
    assert report.rev_package != report.base_package and "flexitok-compare-" in report.rev_package
    for p in report.phases:
        assert p.base.min_seconds > 0 and p.rev.min_seconds > 0 and p.speedup_paired_median > 0
        assert p.max_abs_diff < 1e-5, p.phase
        assert p.base.fraction_of_peak_busy > 0 and p.rev.fraction_of_peak_busy > 0
    assert report.matmul_peak_busy_gflops > 0
    assert "B/A" in report.format_table() and "busy" in report.format_table()


def test_generator_bench_reports_both_paths_and_the_ratio() -> None:
    result = run_generator_benchmark(
        GeneratorBenchConfig(preset="tiny", tokens=4, batch_size=2, device="cpu", warmup=0, repeats=2)
    )
    assert result.cached_equals_uncached is True
    assert result.cache_speedup == pytest.approx(result.uncached_s / result.cached_s)
    assert result.cached_tokens_per_s == pytest.approx(2 * 4 / result.cached_s)
    assert "KV-cache speed-up" in result.format_table()
    with pytest.raises(InvalidInputError, match="tokens"):
        run_generator_benchmark(GeneratorBenchConfig(preset="tiny", tokens=10_000, device="cpu"))


def test_bench_cli_prints_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    FlexTok(tiny_config()).save_pretrained(tmp_path / "m")
    out = tmp_path / "bench.json"
    args = ["bench", "tokenizer", "--model", str(tmp_path / "m"), "--steps", "1", "--batch-size", "1", "--warmup", "0"]
    args += ["--repeats", "1", "--device", "cpu", "--guidance-scale", "1", "--phases", "tokenize,detokenize"]
    rc = main([*args, "--threads", "1", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "detokenize" in captured.out and "guidance off" in captured.out and "decoder_pass " not in captured.out
    data = json.loads(out.read_text())
    assert data["phases"]["detokenize"]["images_per_second"] > 0 and data["image_size"] == [32, 32]
    assert data["threads"] == 1
    with pytest.raises(SystemExit) as info:  # argparse rejects a non-positive step count
        main(["bench", "tokenizer", "--preset", "tiny", "--steps", "0"])
    assert info.value.code == 2 and "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["bench", "tokenizer", "--phases", "encode"])
    assert info.value.code == 2 and "phases" in capsys.readouterr().err
