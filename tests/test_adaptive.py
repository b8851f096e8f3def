"""Adaptive token budgets: target parsing, the bisection, the real-model search, complexity measures, the report."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexitok import DecodeConfig
from flexitok.cli.main import main
from flexitok.codec.adaptive import QualityTarget, bisect_k, build_scorer, decode_tokens, search_k
from flexitok.codec.ftok import read_ftok
from flexitok.codec.report import gradient_magnitude, png_bits_per_pixel, spearman
from flexitok.errors import InvalidInputError
from flexitok.eval.metrics import psnr
from tests.conftest import tiny_model


# ---------------------------------------------------------------------------- targets
def test_target_parsing() -> None:
    t = QualityTarget.parse("PSNR=24")
    assert t == QualityTarget("psnr", 24.0) and t.higher_is_better and t.is_met(24.0) and not t.is_met(23.9)
    s = QualityTarget.parse("ssim=0.8")
    assert s.value == 0.8 and s.is_met(0.85)
    f = QualityTarget.parse("lpips-like=0.1")
    assert not f.higher_is_better and f.is_met(0.05) and not f.is_met(0.2)
    assert str(t) == "psnr=24"
    for bad, msg in (("psnr", "METRIC=VALUE"), ("psnr=abc", "number"), ("mse=3", "unknown quality metric")):
        with pytest.raises(InvalidInputError, match=msg):
            QualityTarget.parse(bad)
    with pytest.raises(InvalidInputError, match="finite"):
        QualityTarget.parse("psnr=inf")


# ---------------------------------------------------------------------------- bisection
@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 33, 256])
def test_bisect_finds_the_smallest_k_for_monotone_quality(n: int) -> None:
    rng = random.Random(n)
    target = QualityTarget("psnr", 20.0)
    for threshold in sorted({1, n, *(rng.randint(1, n) for _ in range(10))}):
        calls: list[int] = []

        def score(k: int, threshold: int = threshold, calls: list[int] = calls) -> float:
            calls.append(k)
            return 20.0 + (k - threshold) * 0.1  # meets the target exactly from k = threshold on

        result = bisect_k(n, score, target)
        brute = min(k for k in range(1, n + 1) if target.is_met(score(k)))
        assert result.k == threshold == brute and result.met
        searched = calls[: len(calls) - n]  # the brute-force calls came last
        assert len(searched) == len(set(searched)) <= 1 + math.ceil(math.log2(n))
        assert result.scores[result.k] == result.score


def test_bisect_falls_back_to_n_when_never_met_and_ignores_nan() -> None:
    target = QualityTarget("ssim", 0.9)
    result = bisect_k(64, lambda k: 0.5 + k / 1000, target)
    assert result.k == 64 and not result.met and list(result.scores) == [64]
    assert not bisect_k(8, lambda k: float("nan"), target).met
    lower = QualityTarget("lpips-like", 0.2)
    assert bisect_k(100, lambda k: 1.0 / k, lower).k == 5  # 1/k <= 0.2 from k = 5 on
    with pytest.raises(InvalidInputError):
        bisect_k(0, lambda k: 1.0, target)


def test_bisect_on_non_monotone_quality_returns_a_k_that_meets_the_target() -> None:
    # Quality dips at k = 5..6 after meeting the target at 4: the visited k that meets it is still correct.
    table = {1: 10, 2: 12, 3: 19, 4: 21, 5: 18, 6: 19, 7: 22, 8: 25}
    result = bisect_k(8, lambda k: float(table[k]), QualityTarget("psnr", 20))
    assert result.met and table[result.k] >= 20
    assert all(table[k] < 20 for k in result.scores if k < result.k)


# ---------------------------------------------------------------------------- real model
def test_search_k_with_a_model_is_deterministic_and_reproducible() -> None:
    model = tiny_model()
    image = torch.rand(3, 32, 32) * 2 - 1
    settings = DecodeConfig(seed=5, steps=2)
    tokens = model.tokenize(image[None])[0]
    n = model.n_registers
    full = float(psnr(image[None], decode_tokens(model, tokens, settings))[0])
    target = QualityTarget("psnr", full - 0.5)
    a = search_k(model, image, target, decode=settings)
    b = search_k(model, image, target, decode=settings, tokens=tokens)
    assert a.k == b.k and a.scores == b.scores and a.met
    assert 1 <= a.k <= n and a.score >= target.value
    # Decoding the chosen prefix again with the same settings reproduces the score exactly.
    again = float(psnr(image[None], decode_tokens(model, tokens[: a.k], settings))[0])
    assert again == pytest.approx(a.score, abs=1e-9)
    # An unreachable target falls back to all tokens.
    never = search_k(model, image, QualityTarget("psnr", 99.0), decode=settings, tokens=tokens)
    assert never.k == n and not never.met


def test_scorers_agree_with_metrics() -> None:
    a = torch.rand(1, 3, 32, 32) * 2 - 1
    b = (a + 0.1 * torch.randn_like(a)).clamp(-1, 1)
    assert build_scorer("psnr")(a, b) == pytest.approx(float(psnr(a, b)[0]))
    ssim_score = build_scorer("ssim")
    assert ssim_score(a, a) == pytest.approx(1.0) and ssim_score(a, b) < 1.0


def test_feature_distance_scorer() -> None:
    pytest.importorskip("efficientnet_lite_pytorch", reason="EfficientNet-Lite0 features need the [eval] extra")
    score = build_scorer("lpips-like")
    a = torch.rand(1, 3, 32, 32) * 2 - 1
    assert score(a, a.clone()) == pytest.approx(0.0, abs=1e-5)
    assert score(a, -a) > score(a, (a + 0.05 * torch.randn_like(a)).clamp(-1, 1)) > 0


# ---------------------------------------------------------------------------- complexity measures
def test_complexity_measures_order_images() -> None:
    flat = torch.zeros(3, 32, 32)
    smooth = torch.linspace(-1, 1, 32).expand(3, 32, 32).clone()
    noisy = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert gradient_magnitude(flat) == 0.0
    assert 0 < gradient_magnitude(smooth) < gradient_magnitude(noisy)
    assert png_bits_per_pixel(flat) < png_bits_per_pixel(smooth) < png_bits_per_pixel(noisy)


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties get average ranks: ranks a = [1, 2.5, 2.5, 4], b = [1, 2, 3, 4] -> Pearson of ranks.
    ra, rb = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4])
    assert spearman([1, 2, 2, 3], [5, 6, 7, 8]) == pytest.approx(float(np.corrcoef(ra, rb)[0, 1]))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1, 2], [2, 1]))


# ---------------------------------------------------------------------------- CLI and report
def test_cli_encode_folder_with_target_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(folder / "flat.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "noise.png")
    y, x = np.mgrid[0:32, 0:32]
    Image.fromarray(np.stack([x * 8, y * 8, x * 4], -1).astype(np.uint8)).save(folder / "ramp.png")
    report, out_dir = tmp_path / "report.md", tmp_path / "ftok"
    args = ["encode", str(folder), "--target", "psnr=8", "--report", str(report), "-o", str(out_dir)]
    code = main([*args, "--model", str(tmp_path / "model"), "--steps", "3"])
    out = capsys.readouterr().out
    assert code == 0
    text = report.read_text()
    assert "psnr=8" in text and "Spearman" in text and "PNG bits per pixel" in text
    for name in ("flat", "noise", "ramp"):
        f = read_ftok(out_dir / f"{name}.ftok")
        assert 1 <= f.k <= model.n_registers and f.decode.steps == 3
        assert f"k={f.k} tokens" in out
        assert f"| {folder / (name + '.png')} | {f.k} |" in text
    assert "3 images" in out


def test_cli_encode_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert main(["encode", str(img), "--report", str(tmp_path / "r.md")]) == 2
    assert "--target" in capsys.readouterr().err
    assert main(["encode", str(img), "--target", "psnr"]) == 2
    assert "METRIC=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["encode", str(img), "-k", "4", "--target", "psnr=20"])  # mutually exclusive
    capsys.readouterr()
