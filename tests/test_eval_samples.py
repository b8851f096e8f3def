"""`flexitok eval reference`, and `eval generator --reference`: ADM sample npz files, resume, metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexitok import DecodeConfig, GenerationPipeline
from flexitok.cli.main import main
from flexitok.eval.metrics import frechet_distance_from_stats, gaussian_stats, precision_recall
from flexitok.eval.reference import ReferenceStats, load_reference, reference_from_features, save_reference
from flexitok.eval.samples import SampleJob, generate_samples, iter_npz_images, sample_metrics
from flexitok.sampling.ar import ARSamplingConfig


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/{train,test}/<4 classes>/ with PNGs and JPEGs of mixed sizes and modes."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for split, per in (("train", 5), ("test", 2)):
        for c, name in enumerate(["ant", "bee", "cat", "dog"]):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per):
                h, w = (20 + 3 * i, 24) if i % 2 else (24, 18)
                arr = (rng.random((h, w, 3)) * 60 + 60 * c).astype(np.uint8)
                img = Image.fromarray(arr)
                if i % 2:
                    img.convert("L").save(d / f"{i}.jpg")
                else:
                    img.save(d / f"{i}.png")
    return root


def test_eval_reference_cli_writes_adm_keys_and_metadata(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "ref.npz"
    args = ["eval", "reference", "--data", "folder", "--data-path", str(tree), "--split", "train"]
    args += ["--image-size", "16", "-n", "8", "--balanced", "--seed", "1", "--device", "cpu", "-o", str(out)]
    assert main(args) == 0
    with np.load(out) as z:
        assert z["mu"].shape == (1280,) and z["sigma"].shape == (1280, 1280) and z["mu"].dtype == np.float64
        assert z["features"].shape == (8, 1280)
        np.testing.assert_allclose(z["mu"], z["features"].astype(np.float64).mean(0), rtol=1e-6, atol=1e-6)
        assert np.bincount(z["labels"]).tolist() == [2, 2, 2, 2]  # class-balanced
    ref = load_reference(out)
    assert ref.extractor == "efflite0" and not ref.assumed_extractor
    assert ref.meta == {"n": 8, "data": "folder", "path": str(tree), "split": "train", "seed": 1, "balanced": True,
                        "image_size": 16}  # fmt: skip
    # Another seed draws another subset; a bad output name changes nothing on disk.
    other = tmp_path / "ref2.npz"
    assert main([*args[:-6], "-n", "8", "--seed", "2", "--device", "cpu", "-o", str(other)]) == 0
    assert not np.allclose(np.load(other)["mu"], np.load(out)["mu"])
    assert main([*args[:-1], str(tmp_path / "ref.txt")]) == 2
    assert not (tmp_path / "ref.txt").exists()


def _job(n: int, chunk: int) -> SampleJob:
    return SampleJob(
        n=n,
        n_tokens=4,
        sampling=ARSamplingConfig(guidance_scale=2.0),
        decode=DecodeConfig(steps=2, seed=5),
        chunk_size=chunk,
        batch_size=3,
    )


def test_samples_are_balanced_resumable_and_chunking_independent(tmp_path: Path) -> None:
    pipe = GenerationPipeline.from_pretrained("default", "default", device="cpu")
    classes = pipe.generator.config.num_classes
    n = 7
    full = generate_samples(pipe, _job(n, chunk=5), tmp_path / "full", progress=False)
    assert full is not None and full.name == f"samples_{n}x32x32x3.npz"
    with np.load(full) as z:
        images, labels = z["arr_0"], z["arr_1"]
    assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == [i % classes for i in range(n)]  # equal per class (cycling)
    # Interrupted after one chunk, then resumed with another chunk size... is refused (other settings);
    # resumed with the same settings, the result is the uninterrupted one.
    part = tmp_path / "part"
    assert generate_samples(pipe, _job(n, chunk=4), part, progress=False, stop_after_chunks=1) is None
    assert len(list((part / "chunks").glob("chunk_*.npz"))) == 1
    with pytest.raises(Exception, match="--resume"):
        generate_samples(pipe, _job(n, chunk=4), part, progress=False)
    with pytest.raises(Exception, match="chunk_size"):
        generate_samples(pipe, _job(n, chunk=5), part, resume=True, progress=False)
    resumed = generate_samples(pipe, _job(n, chunk=4), part, resume=True, progress=False)
    assert resumed is not None
    with np.load(resumed) as z:
        np.testing.assert_array_equal(z["arr_1"], labels)
        # Sample i is seeded seed + i whatever the chunking: the same images up to the decoder's float sums.
        assert np.abs(z["arr_0"].astype(int) - images.astype(int)).max() <= 1
    batches = list(iter_npz_images(resumed, 5))
    assert [len(b) for b in batches] == [5, 2] and np.array_equal(np.concatenate(batches), np.load(resumed)["arr_0"])


class _Pixels:
    """Cheap extractor: 2x2 average-pooled pixels, [B, 12]."""

    name = "pixels"
    metric_name = "FD-pixels"
    dim = 12

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images.float(), 2).flatten(1)


def test_sample_metrics_match_direct_computation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=images, arr_1=np.zeros(20, dtype=np.int64))
    ref_feats = torch.randn(15, 12, dtype=torch.float64) * 0.3
    ref = ReferenceStats(*(t.numpy() for t in gaussian_stats(ref_feats)), extractor="pixels")
    ref.features = ref_feats.float().numpy()
    row = sample_metrics(tmp_path / "s.npz", _Pixels(), ref, batch_size=6, progress=False)
    feats = _Pixels()(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).double()
    expected = frechet_distance_from_stats(
        *gaussian_stats(feats), torch.from_numpy(ref.mu), torch.from_numpy(ref.sigma)
    )
    assert row["FD-pixels"] == pytest.approx(expected, rel=1e-6)
    p, r = precision_recall(torch.from_numpy(ref.features), feats.float())
    assert (row["precision"], row["recall"]) == (pytest.approx(p), pytest.approx(r))
    assert "IS" not in row  # no logits from this extractor


def test_eval_generator_reference_cli_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feats = torch.randn(40, 1280) * 0.1
    ref = save_reference(tmp_path / "ref.npz", reference_from_features(feats, "efflite0", {"split": "val"}))
    base = ["eval", "generator", "--reference", str(ref), "-n", "6", "--tokens", "4", "--cfg-scales", "3"]
    base += ["--steps", "1", "--device", "cpu", "--chunk-size", "4", "--batch-size", "3"]
    out = tmp_path / "samples"
    assert main([*base, "--out", str(out), "--json", str(tmp_path / "r.json")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["FD-EffLite0"] > 0 and 0 <= rows[0]["precision"] <= 1
    assert Path(rows[0]["samples"]) == out / "tokens4_cfg3" / "samples_6x32x32x3.npz"
    capsys.readouterr()
    # A second run into the same folder needs --resume (resuming is tested on the Python API above).
    assert main([*base, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    # The reference's extractor is checked before any network is loaded; ADM files are taken as Inception.
    assert main([*base, "--out", str(tmp_path / "o2"), "--extractor", "inception"]) == 2
    assert "holds efflite0 statistics" in capsys.readouterr().err
    np.savez(tmp_path / "adm.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    assert main([*base[:2], "--reference", str(tmp_path / "adm.npz"), *base[4:], "--out", str(tmp_path / "o3")]) == 2
    assert "taken as Inception" in capsys.readouterr().err
    assert main([*base]) == 2  # no --out
    assert main(["eval", "generator", "--resume"]) == 2  # --resume without --reference
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


@pytest.mark.slow
def test_two_process_gloo_run_equals_one_process(tmp_path: Path) -> None:
    """torchrun with 2 CPU processes: each rank writes its chunks, rank 0 merges; same samples as 1 process."""
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun is not installed")
    feats = torch.randn(40, 1280) * 0.1
    ref = save_reference(tmp_path / "ref.npz", reference_from_features(feats, "efflite0"))
    args = ["eval", "generator", "--reference", str(ref), "-n", "7", "--tokens", "4", "--cfg-scales", "1"]
    args += ["--steps", "1", "--device", "cpu", "--chunk-size", "2", "--batch-size", "2"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    subprocess.run([*cmd, "-m", "flexitok", *args, "--out", str(tmp_path / "two")], check=True, env=env, timeout=600)
    one = np.load(tmp_path / "one" / "tokens4_cfg1" / "samples_7x32x32x3.npz")
    two = np.load(tmp_path / "two" / "tokens4_cfg1" / "samples_7x32x32x3.npz")
    np.testing.assert_array_equal(one["arr_1"], two["arr_1"])
    assert np.abs(one["arr_0"].astype(int) - two["arr_0"].astype(int)).max() <= 1


def test_adm_images_complete_a_reference(tmp_path: Path) -> None:
    from flexitok.eval.reference import complete_reference

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(9, 8, 8, 3), dtype=np.uint8)
    feats = _Pixels()(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    np.savez(tmp_path / "batch.npz", arr_0=images)  # a sample batch: images only
    ref = load_reference(tmp_path / "batch.npz")
    ref.extractor = "pixels"
    ref = complete_reference(ref, _Pixels(), batch_size=4)
    mu, sigma = gaussian_stats(feats)
    np.testing.assert_allclose(ref.mu, mu.numpy(), atol=1e-6)
    np.testing.assert_allclose(ref.sigma, sigma.numpy(), atol=1e-6)
    assert ref.features is not None and ref.features.shape == (9, 12)


def test_reconstruction_distance_to_a_reference_of_the_originals() -> None:
    """With the originals' own statistics as the reference, FD-ref equals the reconstruction FD (rFD)."""
    from flexitok import FlexTok, tiny_config
    from flexitok.eval.reconstruction import evaluate_reconstruction

    torch.manual_seed(0)
    model = FlexTok(tiny_config(image_size=16, n_registers=4, dim=32, depth=1)).eval()
    images = torch.rand(10, 3, 16, 16) * 2 - 1
    data = [{"image": im, "label": 0} for im in images]
    ref = ReferenceStats(*(t.numpy() for t in gaussian_stats(_Pixels()(images).double())), extractor="pixels")
    result = evaluate_reconstruction(
        model, data, ks=[1, 4], n_images=10, batch_size=4, decode=DecodeConfig(steps=1), extractor=_Pixels(),
        progress=False, reference=ref,
    )  # fmt: skip
    assert result["metrics"] == ["PSNR", "SSIM", "FD-pixels", "FD-pixels-ref"]
    for row in result["rows"]:
        assert row["FD-pixels-ref"] == pytest.approx(row["FD-pixels"], rel=1e-6, abs=1e-9)


def test_eval_tokenizer_reference_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = save_reference(tmp_path / "ref.npz", reference_from_features(torch.randn(5, 1280), "efflite0"))
    base = ["eval", "tokenizer", "--reference", str(ref), "-n", "4", "--out", str(tmp_path / "out")]
    assert main([*base, "--extractor", "none"]) == 2
    assert "--reference needs features" in capsys.readouterr().err
    assert main([*base, "--extractor", "inception"]) == 2
    assert "holds efflite0 statistics" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_eval_tokenizer_on_a_seeded_random_subset_of_a_val_like_split(tree: Path, tmp_path: Path) -> None:
    from flexitok import FlexTok, tiny_config

    FlexTok(tiny_config(image_size=16, n_registers=4, dim=32, depth=1)).save_pretrained(tmp_path / "tok")
    args = ["eval", "tokenizer", "--model", str(tmp_path / "tok"), "--data", "folder", "--data-path", str(tree)]
    args += ["--split", "train", "-n", "6", "--subset-seed", "3", "--extractor", "none", "--tokens", "1,4"]
    assert main([*args, "--steps", "1", "--examples", "0", "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
    result = json.loads((tmp_path / "o" / "results.json").read_text())
    assert result["n_images"] == 6 and result["split"] == "train" and [r["k"] for r in result["rows"]] == [1, 4]


def test_one_extractor_flag_for_every_eval_command() -> None:
    from flexitok.cli.main import build_parser

    parser = build_parser()
    spec = ["--extractor", "inception:/w.pth"]
    for argv in (["tokenizer", "--out", "o"], ["generator"], ["reference", "-o", "r.npz"]):
        assert parser.parse_args(["eval", *argv, *spec]).extractor == "inception:/w.pth"
    # The old eval generator name is gone: one flag name for the features.
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "generator", "--features", "inception"])
