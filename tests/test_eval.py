"""Metrics, feature extractors, the reconstruction evaluation and ``flexitok eval``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from flexitok import DecodeConfig
from flexitok.errors import InvalidInputError
from flexitok.eval.features import EfficientNetLite0Features, FeatureExtractor, FeatureExtractorError, build_extractor
from flexitok.eval.metrics import frechet_distance, frechet_distance_from_stats, gaussian_stats, psnr, ssim
from flexitok.eval.plots import image_grid, plot_metrics_vs_k
from flexitok.eval.reconstruction import (
    default_ks,
    evaluate_reconstruction,
    markdown_table,
    write_reconstruction_report,
)


# --------------------------------------------------------------------------- PSNR / SSIM
def test_psnr_identical_and_known_noise() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 16, 16, generator=g) * 1.6 - 0.8
    assert torch.isinf(psnr(a, a)).all()
    signs = torch.randint(0, 2, a.shape, generator=g).float() * 2 - 1
    b = a + 0.1 * signs  # mse = 0.01 exactly, no clamping since |a| <= 0.8
    expected = 10 * math.log10(2.0**2 / 0.01)
    torch.testing.assert_close(psnr(a, b), torch.full((3,), expected, dtype=torch.float64))
    # Per-image values: one noisier image gets a lower PSNR than the others.
    b[1] = a[1] + 0.2 * signs[1]
    p = psnr(a, b)
    assert p[1] < p[0] and abs(float(p[1]) - 10 * math.log10(4 / 0.04)) < 1e-6


def test_ssim_sanity_and_skimage_agreement() -> None:
    sk = pytest.importorskip("skimage.metrics", reason="the reference SSIM comes from scikit-image (the [data] extra)")
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    torch.testing.assert_close(ssim(a, a), torch.ones(2, dtype=torch.float64))
    noisy = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    s = ssim(noisy, a)
    assert (s < 0.95).all() and (s > 0).all()
    # Reference: scikit-image's Gaussian SSIM of the same images mapped to [0, 1].
    ref_sk = sk.structural_similarity(
        ((noisy[0] + 1) / 2).permute(1, 2, 0).double().numpy(),
        ((a[0] + 1) / 2).permute(1, 2, 0).double().numpy(),
        data_range=1.0,
        channel_axis=2,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert abs(float(s[0]) - ref_sk) < 1e-6
    with pytest.raises(InvalidInputError):
        ssim(a, a[:1])


# --------------------------------------------------------------------------- Frechet distance
def _samples_with_moments(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """n samples whose sample mean and unbiased covariance are exactly ``mean`` and ``cov``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, mean.numel(), generator=g, dtype=torch.float64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(x.T @ x / (n - 1))
    white = torch.linalg.solve_triangular(chol, x.T, upper=False).T  # sample covariance = I
    return white @ torch.linalg.cholesky(cov).T + mean


def test_frechet_distance_closed_form_diagonal() -> None:
    d = 6
    mu_a, mu_b = torch.zeros(d, dtype=torch.float64), torch.linspace(-1, 1, d, dtype=torch.float64)
    var_a = torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    var_b = torch.linspace(3.0, 0.2, d, dtype=torch.float64)
    closed = float(((mu_a - mu_b) ** 2).sum() + (var_a + var_b - 2 * (var_a * var_b).sqrt()).sum())
    a = _samples_with_moments(500, mu_a, torch.diag(var_a), 0)
    b = _samples_with_moments(400, mu_b, torch.diag(var_b), 1)
    assert abs(frechet_distance(a, b) - closed) < 1e-8  # N*M > D*D: covariance (eigen) path
    assert abs(frechet_distance_from_stats(mu_a, torch.diag(var_a), mu_b, torch.diag(var_b)) - closed) < 1e-9
    assert frechet_distance(a, a) < 1e-8


def test_frechet_distance_general_covariances_and_low_rank() -> None:
    g = torch.Generator().manual_seed(3)
    d = 5
    m1, m2 = torch.randn(d, d, generator=g, dtype=torch.float64), torch.randn(d, d, generator=g, dtype=torch.float64)
    cov_a, cov_b = m1 @ m1.T + 0.1 * torch.eye(d), m2 @ m2.T + 0.1 * torch.eye(d)  # do not commute
    mu_a, mu_b = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    ref = float(
        ((mu_a - mu_b) ** 2).sum()
        + np.trace(cov_a.numpy() + cov_b.numpy() - 2 * scipy.linalg.sqrtm(cov_a.numpy() @ cov_b.numpy()).real)
    )
    assert abs(frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) - ref) < 1e-8
    # Few samples in many dimensions (N*M <= D*D): the exact low-rank path agrees with the stats path.
    fa = torch.randn(6, 40, generator=g, dtype=torch.float64)
    fb = torch.randn(7, 40, generator=g, dtype=torch.float64) * 2 + 0.5
    via_stats = frechet_distance_from_stats(*gaussian_stats(fa), *gaussian_stats(fb))
    assert abs(frechet_distance(fa, fb) - via_stats) < 1e-6 * max(1.0, via_stats)
    with pytest.raises(InvalidInputError):
        frechet_distance(fa, fb[:, :10])
    with pytest.raises(InvalidInputError):
        frechet_distance(fa[:1], fb)


# --------------------------------------------------------------------------- features
def test_efficientnet_lite0_extractor_offline() -> None:
    ext = build_extractor("FD-EffLite0")
    assert isinstance(ext, EfficientNetLite0Features) and isinstance(ext, FeatureExtractor)
    assert ext.metric_name == "FD-EffLite0" and ext.dim == 1280
    g = torch.Generator().manual_seed(0)
    smooth = torch.linspace(-1, 1, 32).expand(1, 3, 32, 32)
    images = torch.cat([torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, smooth, smooth])
    feats = ext(images)
    assert feats.shape == (3, 1280) and torch.isfinite(feats).all()
    assert not torch.allclose(feats[0], feats[1], atol=1e-3)
    torch.testing.assert_close(feats[1], feats[2])
    with pytest.raises(InvalidInputError):
        ext(torch.zeros(1, 1, 32, 32))
    with pytest.raises(InvalidInputError, match="unknown feature extractor"):
        build_extractor("clip")


def test_inception_extractor_clear_error_without_weights() -> None:
    try:
        ext = build_extractor("inception")
    except FeatureExtractorError as e:
        assert "efflite0" in str(e)
    else:  # weights exist locally: the extractor must then work
        assert ext(torch.zeros(2, 3, 32, 32)).shape == (2, 2048)


# --------------------------------------------------------------------------- reconstruction eval
class _PooledPixels:
    """Cheap stand-in extractor (4x4 average-pooled pixels) so the eval tests stay fast."""

    metric_name = "FD-pixels"
    dim = 48

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1)


def _tiny_model() -> torch.nn.Module:
    from flexitok import FlexTok, tiny_config

    torch.manual_seed(0)
    model = FlexTok(tiny_config(image_size=32, n_registers=16)).eval()
    with torch.no_grad():  # a fresh adaLN-zero decoder predicts exactly 0; give it a non-degenerate output
        for p in model.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.02)
    return model


def _dataset(n: int) -> torch.utils.data.Dataset:
    from flexitok.data import DataConfig, build_dataset

    return build_dataset(DataConfig("skimage", split="test", image_size=32, limit=n))


def test_evaluate_reconstruction_tiny_flextok(tmp_path: Path) -> None:
    model, ds = _tiny_model(), _dataset(5)
    decode = DecodeConfig(steps=2, guidance_scale=3.0, seed=7)
    kwargs = dict(ks=[1, 4, 16], n_images=5, decode=decode, extractor=_PooledPixels())
    res = evaluate_reconstruction(model, ds, batch_size=2, n_examples=2, progress=False, **kwargs)
    assert res["ks"] == [1, 4, 16] and res["n_images"] == 5
    assert res["metrics"] == ["PSNR", "SSIM", "FD-pixels"]
    assert [r["k"] for r in res["rows"]] == [1, 4, 16]
    for row in res["rows"]:
        assert all(math.isfinite(row[m]) for m in res["metrics"])
        assert -1 <= row["SSIM"] <= 1 and row["FD-pixels"] >= 0
    # Noise is drawn per image from one seeded generator: results do not depend on the batch size.
    res3 = evaluate_reconstruction(model, ds, batch_size=3, progress=False, **kwargs)
    for r2, r3 in zip(res["rows"], res3["rows"], strict=True):
        for m in res["metrics"]:
            assert abs(r2[m] - r3[m]) < 1e-4 * max(1.0, abs(r2[m]))
    assert res["examples"]["original"].shape == (2, 3, 32, 32) and res["examples"][4].shape == (2, 3, 32, 32)

    paths = write_reconstruction_report(res, tmp_path / "out", extra={"model": "tiny"})
    summary = json.loads(paths["json"].read_text())
    assert summary["model"] == "tiny" and [r["k"] for r in summary["rows"]] == [1, 4, 16]
    assert "| 16 |" in paths["markdown"].read_text()
    from PIL import Image

    assert Image.open(paths["plot"]).size[0] > 100 and Image.open(paths["examples"]).size[1] > 4 * 32


class _NaNForK1(torch.nn.Module):
    """Stand-in tokenizer: decodes a grey image, except NaN pixels when only 1 token is kept."""

    n_registers = 4

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], 4, dtype=torch.long)

    def initial_noise(self, b: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(b, 3, 8, 8, generator=generator)

    def detokenize(
        self, tokens: torch.Tensor, decode: object = None, *, keep_k: int, noise: torch.Tensor, **kw: object
    ) -> torch.Tensor:
        out = torch.zeros(tokens.shape[0], 3, 32, 32) + 0.1 * noise.mean()
        return out * float("nan") if keep_k == 1 else out


def test_evaluate_reconstruction_reports_nonfinite_outputs() -> None:
    with pytest.warns(UserWarning, match="NaN/inf pixels"):
        res = evaluate_reconstruction(_NaNForK1(), _dataset(3), ks=[1, 4], n_images=3, extractor=_PooledPixels())
    bad, good = res["rows"]
    assert bad["nonfinite"] == 3 and math.isnan(bad["PSNR"]) and math.isnan(bad["FD-pixels"])
    assert good["nonfinite"] == 0 and all(math.isfinite(good[m]) for m in res["metrics"])


def test_evaluate_reconstruction_validates_ks() -> None:
    model, ds = _tiny_model(), _dataset(2)
    with pytest.raises(InvalidInputError, match="ks must"):
        evaluate_reconstruction(model, ds, ks=[0, 4], n_images=2, extractor=None, progress=False)
    with pytest.raises(InvalidInputError, match="ks must"):
        evaluate_reconstruction(model, ds, ks=[17], n_images=2, extractor=None, progress=False)
    assert default_ks(16) == [1, 2, 4, 8, 16] and default_ks(12) == [1, 2, 4, 8, 12]


def test_report_helpers_handle_non_finite_values() -> None:
    rows = [{"k": 1, "PSNR": float("inf"), "SSIM": 1.0}, {"k": 2, "PSNR": 30.0, "SSIM": float("nan")}]
    result = {"ks": [1, 2], "n_images": 1, "steps": 1, "metrics": ["PSNR", "SSIM"], "rows": rows}
    table = markdown_table(result)
    assert "| 1 | inf | 1 |" in table and "| 2 | 30 | nan |" in table
    img = plot_metrics_vs_k(rows, ["PSNR", "SSIM"], use_matplotlib=False)
    assert img.size == (720, 260)
    grid = image_grid([torch.zeros(3, 3, 8, 8), torch.ones(2, 3, 8, 8)], ["a", "b"])
    assert grid.size[1] >= 2 * 64  # small images are enlarged


def test_cli_eval(tmp_path: Path) -> None:
    from flexitok.cli.main import main

    model_dir = tmp_path / "model"
    _tiny_model().save_pretrained(model_dir)
    out = tmp_path / "eval"
    argv = [
        "eval",
        "tokenizer",
        "--model",
        str(model_dir),
        "--data",
        "skimage",
        "-n",
        "3",
        "--ks",
        "1,16",
        "--steps",
        "1",
    ]
    code = main([*argv, "--extractor", "none", "--device", "cpu", "--out", str(out), "--examples", "2"])
    assert code == 0
    summary = json.loads((out / "results.json").read_text())
    assert [r["k"] for r in summary["rows"]] == [1, 16] and summary["n_images"] == 3
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.md", "metrics_vs_k.png", "examples.png"}
    assert main(["eval", "tokenizer", "--model", str(model_dir), "--ks", "1,99", "--out", str(tmp_path / "bad")]) == 2
