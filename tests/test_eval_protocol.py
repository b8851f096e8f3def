"""The paper evaluation protocol: the FID Inception (random weights), IS, precision/recall, reference files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, IterableDataset

from flexitok.errors import DatasetError, FeatureExtractorError, InvalidInputError
from flexitok.eval.features import InceptionFeatures, build_extractor, extractor_name
from flexitok.eval.inception import FIDInceptionV3, _avg3, load_fid_inception
from flexitok.eval.metrics import frechet_distance, frechet_distance_from_stats, inception_score, precision_recall
from flexitok.eval.reference import (
    ReferenceStats,
    check_extractor,
    load_reference,
    reference_from_features,
    reference_subset_features,
    save_reference,
    select_indices,
)


# --------------------------------------------------------------------------- FID Inception
@pytest.fixture(scope="module")
def inception() -> FIDInceptionV3:
    torch.manual_seed(0)
    return FIDInceptionV3().eval()


@pytest.fixture
def small_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the network at 75x75 (its smallest valid input) instead of 299x299 to keep the tests fast; the
    299 resize itself is tested on its own."""
    monkeypatch.setattr("flexitok.eval.inception.INPUT_SIZE", 75)


def test_inception_shapes_on_random_weights(inception: FIDInceptionV3, small_input: None) -> None:
    ext = InceptionFeatures(net=inception)
    assert ext.name == "inception" and ext.metric_name == "FID" and ext.dim == 2048
    images = torch.rand(2, 3, 40, 56) * 2 - 1
    feats, logits = ext.features_and_logits(images)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # pool of ReLU outputs
    assert not torch.allclose(feats[0], feats[1])
    torch.testing.assert_close(ext(images), feats)
    # The IS logits are the classifier's matmul without its bias.
    torch.testing.assert_close(logits, feats @ inception.fc.weight.T, rtol=1e-4, atol=1e-4)
    with pytest.raises(InvalidInputError):
        ext(torch.zeros(1, 1, 32, 32))


def test_inception_resize_is_plain_bilinear_to_299() -> None:
    x = torch.rand(1, 3, 512, 384) * 2 - 1
    out = FIDInceptionV3.preprocess(x)
    assert out.shape == (1, 3, 299, 299)
    torch.testing.assert_close(out, F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False))
    antialiased = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
    assert (out - antialiased).abs().max() > 1e-2  # not the antialiased resize
    same = torch.rand(1, 3, 299, 299) * 2 - 1
    assert torch.equal(FIDInceptionV3.preprocess(same), same)
    clamped = FIDInceptionV3.preprocess(torch.full((1, 3, 8, 8), 3.0))  # clamped to [-1, 1], then resized
    torch.testing.assert_close(clamped, torch.ones_like(clamped))


def test_block_pools_ignore_padding_and_last_block_uses_max() -> None:
    ones = torch.ones(1, 2, 5, 5)
    torch.testing.assert_close(_avg3(ones), ones)  # count_include_pad=True would give 4/9 in the corners
    net = FIDInceptionV3()
    assert net.Mixed_7c.max_pool and not net.Mixed_7b.max_pool


def _expected_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of a few tensors of the pytorch-fid file (torchvision Inception3 names, no AuxLogits)."""
    return {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_1a_3x3.bn.running_var": (32,),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }


def test_state_dict_layout_and_strict_round_trip(tmp_path: Path, inception: FIDInceptionV3, small_input: None) -> None:
    state = inception.state_dict()
    for key, shape in _expected_layout().items():
        assert tuple(state[key].shape) == shape, key
    # 94 conv+bn layers (5 stem, 3x7 A, 4 B, 4x10 C, 6 D, 2x9 E) plus the classifier.
    assert sum(k.endswith(".conv.weight") for k in state) == 94
    # 94 x (conv + 4 BN tensors) + fc weight and bias: the 472 tensors of pytorch-fid's network
    # (checked once against pytorch-fid 0.3.0 with scripts/check_fid_inception.py).
    assert sum(not k.endswith("num_batches_tracked") for k in state) == 472
    # The port's file has no num_batches_tracked; torchvision-style files may add the auxiliary head.
    file_state = {k: torch.randn_like(v.float()) if v.is_floating_point() else v for k, v in state.items()}
    file_state = {k: v.abs() if "running_var" in k else v for k, v in file_state.items()}
    file_state = {k: v for k, v in file_state.items() if not k.endswith("num_batches_tracked")}
    file_state["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    path = tmp_path / "pt_inception.pth"
    torch.save(file_state, path)
    net = load_fid_inception(path)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    torch.testing.assert_close(
        net.state_dict()["Mixed_6c.branch7x7_1.conv.weight"], file_state["Mixed_6c.branch7x7_1.conv.weight"]
    )
    ext = build_extractor(f"inception:{path}")
    assert isinstance(ext, InceptionFeatures) and ext(torch.zeros(1, 3, 16, 16)).shape == (1, 2048)
    # A file of another network is a clean error; so is a missing one (which names how to get it).
    del file_state["fc.bias"]
    torch.save(file_state, tmp_path / "bad.pth")
    with pytest.raises(FeatureExtractorError, match="not the FID Inception"):
        load_fid_inception(tmp_path / "bad.pth")
    with pytest.raises(FeatureExtractorError, match="pt_inception-2015-12-05"):
        load_fid_inception(tmp_path / "missing.pth")


def test_extractor_names() -> None:
    assert extractor_name("FD-EffLite0") == "efflite0" and extractor_name("fid") == "inception"
    assert extractor_name("inception:/x/y.pth") == "inception"
    for bad in ("clip", "efflite0:/x"):
        with pytest.raises(InvalidInputError, match="unknown feature extractor"):
            extractor_name(bad)


# --------------------------------------------------------------------------- Frechet distance, IS, P/R
def test_frechet_distance_matches_scipy_sqrtm_on_random_gaussians() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(250, 8)) @ rng.normal(size=(8, 8)) + 0.3
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * scipy.linalg.sqrtm(s_a @ s_b).real)
    assert abs(frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) - ref) < 1e-8 * max(1, ref)
    got = frechet_distance_from_stats(*(torch.from_numpy(x) for x in (mu_a, s_a, mu_b, s_b)))
    assert abs(got - ref) < 1e-8 * max(1, ref)


def test_inception_score_closed_forms() -> None:
    assert inception_score(torch.zeros(50, 1008))[0] == pytest.approx(1.0)  # uniform predictions
    n = 7
    one_hot = torch.full((n, 10), -1e4)
    one_hot[torch.arange(n), torch.arange(n)] = 0.0  # confident, distinct classes
    assert inception_score(one_hot)[0] == pytest.approx(n, rel=1e-9)
    same = torch.full((n, 10), -1e4)
    same[:, 3] = 0.0  # confident but always the same class
    assert inception_score(same)[0] == pytest.approx(1.0)
    # Two samples p = (a, 1-a) and (1-a, a): marginal (1/2, 1/2), KL = a log 2a + (1-a) log 2(1-a).
    a = 0.8
    logits = torch.tensor([[math.log(a), math.log(1 - a)], [math.log(1 - a), math.log(a)]])
    assert inception_score(logits)[0] == pytest.approx(math.exp(a * math.log(2 * a) + (1 - a) * math.log(2 - 2 * a)))
    # Splits: two halves of distinct one-hots, 3 classes each -> 3 +- 0.
    six = torch.full((6, 6), -1e4)
    six[torch.arange(6), torch.arange(6)] = 0.0
    mean, std = inception_score(six, splits=2)
    assert mean == pytest.approx(3.0) and std == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(InvalidInputError):
        inception_score(six, splits=7)


def _brute_force_pr(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x: np.ndarray) -> np.ndarray:
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def coverage(q: np.ndarray, p: np.ndarray, r: np.ndarray) -> float:
        d = np.sqrt(((q[:, None, :] - p[None, :, :]) ** 2).sum(-1))
        return float((d <= r[None, :]).any(1).mean())

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


def test_precision_recall_against_brute_force_and_constructed_sets() -> None:
    rng = np.random.default_rng(1)
    real = rng.normal(size=(120, 5))
    fake = rng.normal(size=(90, 5)) * 1.5 + 0.4
    p, r = precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=3, batch=17)
    bp, br = _brute_force_pr(real, fake, 3)
    assert (p, r) == (pytest.approx(bp), pytest.approx(br)) and 0 < p < 1 and 0 < r < 1
    # Identical sets cover each other; far-apart sets cover nothing.
    x = torch.from_numpy(real)
    assert precision_recall(x, x.clone()) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)
    # Fakes collapsed onto part of the real set: every fake is realistic (precision 1), recall is low.
    cluster = torch.tensor([[0.0, 0.0]] * 5 + [[0.1, 0.0]] * 5) + torch.randn(10, 2) * 1e-3
    wide = torch.cat([torch.randn(40, 2) * 0.05, torch.randn(40, 2) * 0.05 + 10.0])
    p2, r2 = precision_recall(wide, cluster)
    assert p2 == 1.0 and r2 <= 0.5
    with pytest.raises(InvalidInputError):
        precision_recall(x[:3], x)


# --------------------------------------------------------------------------- subsets and reference files
def test_select_indices_random_and_balanced() -> None:
    labels = [i // 10 for i in range(100)]  # a sorted class folder: 10 classes of 10
    a = select_indices(None, 100, 20, seed=0, balanced=False)
    assert a == sorted(set(a)) and len(a) == 20 and a == select_indices(None, 100, 20, 0, False)
    assert a != list(range(20)) and a != select_indices(None, 100, 20, 1, False)
    assert len({labels[i] for i in a}) > 2  # not the first classes only
    b = select_indices(labels, 100, 30, seed=0, balanced=True)
    assert np.bincount([labels[i] for i in b]).tolist() == [3] * 10
    c = select_indices(labels, 100, 25, seed=0, balanced=True)
    assert sorted(np.bincount([labels[i] for i in c]).tolist()) == [2] * 5 + [3] * 5
    assert select_indices(None, 10, 50, 0, False) == list(range(10))
    with pytest.raises(DatasetError, match="not enough"):
        select_indices(labels, 100, 200, 0, True)
    with pytest.raises(DatasetError, match="class labels"):
        select_indices([-1] * 100, 100, 10, 0, True)


class _Toy(Dataset):
    """Image i is the constant i / 100 (so features identify the image); label i // 10."""

    def __init__(self, n: int = 60) -> None:
        self.labels = [i // 10 for i in range(n)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((3, 4, 4), i / 100), "label": self.labels[i]}


class _ToyStream(IterableDataset):
    class_names = [f"c{j}" for j in range(6)]

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield from (_Toy()[i] for i in range(60))


class _Mean:
    name = "toy"
    metric_name = "FD-toy"
    dim = 1

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3))[:, None]


@pytest.mark.parametrize("stream", [False, True])
def test_reference_subset_is_seeded_random_or_balanced(stream: bool) -> None:
    data = _ToyStream() if stream else _Toy()
    feats, labels, caps = reference_subset_features(
        _Mean(), data, 12, seed=3, balanced=True, batch_size=5, progress=False
    )
    assert feats.shape == (12, 1) and caps is None
    assert np.bincount(labels.numpy()).tolist() == [2] * 6
    ids = (feats[:, 0] * 100).round().long()
    assert ((ids // 10) == labels).all() and len(set(ids.tolist())) == 12
    again, _, _ = reference_subset_features(_Mean(), data, 12, seed=3, balanced=True, batch_size=7, progress=False)
    torch.testing.assert_close(again, feats)
    rand, _, _ = reference_subset_features(_Mean(), data, 12, seed=4, balanced=False, progress=False)
    assert rand.shape == (12, 1) and not torch.equal(rand, feats)
    assert (rand[:, 0] * 100).round().long().tolist() != list(range(12))


def test_reference_file_round_trip_adm_files_and_extractor_check(tmp_path: Path) -> None:
    feats = torch.randn(30, 4, dtype=torch.float64)
    meta = {"data": "folder", "path": "/d", "split": "val", "seed": 0, "balanced": True}
    ref = reference_from_features(feats, "inception", meta)
    path = save_reference(tmp_path / "ref.npz", ref)
    with np.load(path) as z:
        assert {"mu", "sigma", "features", "extractor", "n", "split", "seed"} <= set(z.files)
    back = load_reference(path)
    assert back.extractor == "inception" and not back.assumed_extractor
    assert back.meta["n"] == 30 and back.meta["split"] == "val" and back.meta["balanced"]
    np.testing.assert_allclose(back.mu, feats.mean(0).numpy())
    np.testing.assert_allclose(back.sigma, np.cov(feats.numpy(), rowvar=False))
    # ADM's layout: mu, sigma, arr_0 images, no metadata -> Inception statistics, said so on a mismatch.
    images = np.random.default_rng(0).integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "adm.npz", mu=np.zeros(4), sigma=np.eye(4), arr_0=images)
    adm = load_reference(tmp_path / "adm.npz")
    assert adm.extractor == "inception" and adm.assumed_extractor and adm.images is not None
    with pytest.raises(InvalidInputError, match="taken as Inception"):
        check_extractor(adm, _Mean())
    with pytest.raises(InvalidInputError, match="4-d statistics"):
        check_extractor(ReferenceStats(np.zeros(4), np.eye(4), "toy"), _Mean())
    for bad in ({"arr_1": np.zeros(3)}, {"mu": np.zeros(3), "sigma": np.eye(2)}):
        np.savez(tmp_path / "bad.npz", **bad)
        with pytest.raises(InvalidInputError):
            load_reference(tmp_path / "bad.npz")
    with pytest.raises(InvalidInputError, match="not found"):
        load_reference(tmp_path / "nope.npz")
