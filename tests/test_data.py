"""Datasets, transforms, webdataset shards and the latent/token caches."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexitok.data import (
    FASHION_MNIST_CLASSES,
    DataConfig,
    DatasetError,
    ImageFolder,
    ImageTransform,
    LatentCacheDataset,
    SkimagePhotos,
    TokenShardDataset,
    WebDatasetShards,
    build_dataset,
    write_latent_cache,
    write_token_shards,
    write_webdataset_shards,
)
from flexitok.data.fashion_mnist import DEFAULT_FASHION_MNIST_DIR, fashion_mnist_caption, read_idx
from flexitok.data.skimage_photos import SKIMAGE_TEST_PHOTOS, SKIMAGE_TRAIN_PHOTOS
from flexitok.data.transforms import pil_to_tensor, sample_resized_crop_box, to_rgb

HAS_FMNIST = Path(DEFAULT_FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAS_FMNIST, reason="apt-get install dataset-fashion-mnist")


# --------------------------------------------------------------------------- Fashion-MNIST
@needs_fmnist
def test_fashion_mnist_items_match_raw_idx() -> None:
    ds = build_dataset(DataConfig("fashion_mnist", split="test", image_size=28))
    raw_images = read_idx(Path(DEFAULT_FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz"))
    raw_labels = read_idx(Path(DEFAULT_FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz"))
    assert len(ds) == 10000 == len(raw_labels)
    for i in (0, 1, 9999):
        item = ds[i]
        assert item["label"] == int(raw_labels[i])
        expected = torch.from_numpy(raw_images[i].astype(np.float32)) / 127.5 - 1
        # 28 -> 28 is an identity resize: all three channels equal the grayscale pixels.
        for c in range(3):
            torch.testing.assert_close(item["image"][c], expected)
        assert FASHION_MNIST_CLASSES[item["label"]] is not None


@needs_fmnist
def test_fashion_mnist_resized_shapes_ranges_captions() -> None:
    ds = build_dataset(DataConfig("fashion_mnist", split="train", image_size=32, limit=50))
    assert len(ds) == 50
    labels = set()
    for i in range(50):
        item = ds[i]
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
        assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
        assert float(item["image"].max()) > 0.5  # not blank: garments have bright pixels
        assert 0 <= item["label"] < 10
        assert item["caption"] == fashion_mnist_caption(item["label"], i)
        labels.add(item["label"])
    assert len(labels) > 3
    assert len(FASHION_MNIST_CLASSES) == 10
    assert fashion_mnist_caption(7, 0) == "a photo of a sneaker"
    assert fashion_mnist_caption(9, 0) == "a photo of an ankle boot"
    assert fashion_mnist_caption(7, 1) != fashion_mnist_caption(7, 0)


def test_fashion_mnist_missing_files_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        build_dataset(DataConfig("fashion_mnist", path=str(tmp_path)))
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        build_dataset(DataConfig("fashion_mnist", path=str(tmp_path / "nope")))


def test_data_config_validation() -> None:
    with pytest.raises(DatasetError, match="unknown dataset kind"):
        DataConfig("mnist")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="scale range"):
        DataConfig("skimage", random_resized_crop=(0.9, 0.2))
    with pytest.raises(DatasetError, match="needs DataConfig.path"):
        build_dataset(DataConfig("folder"))


# --------------------------------------------------------------------------- transforms
def _photo(w: int = 80, h: int = 50, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_transforms_deterministic_given_generator() -> None:
    t = ImageTransform(size=24, random_resized_crop=(0.2, 0.9), hflip=True)
    img = _photo()
    a = t(img, torch.Generator().manual_seed(5))
    b = t(img, torch.Generator().manual_seed(5))
    c = t(img, torch.Generator().manual_seed(6))
    assert a.shape == (3, 24, 24)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert -1 <= float(a.min()) and float(a.max()) <= 1


def test_random_resized_crop_box_respects_ranges() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        left, top, right, bottom = sample_resized_crop_box(300, 200, (0.1, 0.5), (0.75, 4 / 3), g)
        assert 0 <= left < right <= 300 and 0 <= top < bottom <= 200
        area = (right - left) * (bottom - top) / (300 * 200)
        assert 0.09 <= area <= 0.52
        assert 0.7 <= (right - left) / (bottom - top) <= 1.4


def test_center_crop_and_hflip() -> None:
    # Left half black, right half white, 40x20: the centre crop of the 2x-shrunk image keeps both halves.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, 20:] = 255
    img = Image.fromarray(arr)
    x = ImageTransform(size=10)(img)
    assert x.shape == (3, 10, 10)
    assert float(x[:, :, 0].mean()) < -0.9 and float(x[:, :, -1].mean()) > 0.9
    flips = [ImageTransform(size=10, hflip=True)(img, torch.Generator().manual_seed(s)) for s in range(16)]
    flipped = [bool(f[:, :, 0].mean() > 0) for f in flips]
    assert any(flipped) and not all(flipped)


def test_to_rgb_modes() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent -> white
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    # 16-bit is scaled by its bit depth, as at inference (flexitok.io.images), not stretched to its own range.
    gray16 = Image.fromarray(np.array([[0, 1000], [2000, 65535]], dtype=np.uint16))
    rgb = np.asarray(to_rgb(gray16))
    assert rgb.shape == (2, 2, 3) and rgb[0, 0, 0] == 0 and rgb[0, 1, 0] == 4 and rgb[1, 1, 0] == 255
    x = pil_to_tensor(Image.new("L", (3, 3), 255))
    assert x.shape == (3, 3, 3) and float(x.min()) == 1.0


# --------------------------------------------------------------------------- image folder
def _make_folder(root: Path) -> None:
    (root / "cats" / "nested").mkdir(parents=True)
    (root / "dogs").mkdir(parents=True)
    _photo(40, 30, 1).save(root / "cats" / "a.png")
    _photo(30, 40, 2).convert("L").save(root / "cats" / "nested" / "b.JPG")
    _photo(32, 32, 3).convert("RGBA").save(root / "cats" / "c.webp")
    _photo(32, 32, 4).convert("P").save(root / "dogs" / "d.gif")
    _photo(33, 31, 5).save(root / "dogs" / "e.bmp")
    _photo(20, 20, 6).save(root / "dogs" / "f.tiff")
    (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    good = (root / "cats" / "a.png").read_bytes()
    (root / "dogs" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "dogs" / "notes.txt").write_text("not an image")


def test_image_folder_skips_corrupt_and_labels(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_dataset(DataConfig("folder", path=str(tmp_path), image_size=16))
    assert isinstance(ds, ImageFolder)
    assert ds.num_skipped == 2
    assert sum("skipped 2 unreadable" in str(w.message) for w in caught) == 1
    assert len(ds) == 6
    assert ds.classes == ("cats", "dogs")
    assert [ds[i]["label"] for i in range(len(ds))] == [0, 0, 0, 1, 1, 1]
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 16, 16)
        assert -1 <= float(item["image"].min()) and float(item["image"].max()) <= 1


def test_image_folder_load_failure_falls_back(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImageFolder(tmp_path, transform=ImageTransform(size=16))
    expected_next = ds[1]
    ds.paths[0].write_bytes(b"corrupted after indexing")
    with pytest.warns(UserWarning, match="using the next image"):
        item = ds[0]
    assert ds.num_load_failures == 1
    assert torch.equal(item["image"], expected_next["image"]) and item["label"] == expected_next["label"]


def test_image_folder_flat_has_no_labels_and_split_dirs(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    for i in range(3):
        _photo(20, 20, i).save(tmp_path / "test" / f"{i}.png")
    ds = build_dataset(DataConfig("folder", path=str(tmp_path), split="test", image_size=8, limit=2))
    assert len(ds) == 2 and ds[0]["label"] == -1
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no readable images"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolder(tmp_path / "missing")


# --------------------------------------------------------------------------- skimage photos
def test_skimage_split_by_photo_and_deterministic_test_crops() -> None:
    assert not set(SKIMAGE_TRAIN_PHOTOS) & set(SKIMAGE_TEST_PHOTOS)
    a = build_dataset(DataConfig("skimage", split="test", image_size=24, limit=6))
    b = build_dataset(DataConfig("skimage", split="test", image_size=24, limit=6))
    assert isinstance(a, SkimagePhotos) and len(a) == 6
    for i in range(6):
        assert torch.equal(a[i]["image"], b[i]["image"])
        assert a[i]["label"] == i % len(SKIMAGE_TEST_PHOTOS)
    assert not torch.equal(a[0]["image"], a[2]["image"])  # same photo, different crop
    train = SkimagePhotos("train", ImageTransform(size=24, random_resized_crop=(0.05, 0.3)), num_items=10)
    torch.manual_seed(0)
    x1 = train[0]["image"]
    x2 = train[0]["image"]
    assert x1.shape == (3, 24, 24) and not torch.equal(x1, x2)  # fresh random crop per access


# --------------------------------------------------------------------------- webdataset
def test_webdataset_roundtrip_and_rank_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = [_photo(12, 12, s) for s in range(10)]
    labels = [s % 3 for s in range(10)]
    shards = write_webdataset_shards(zip(images, labels, strict=True), tmp_path / "train", shard_size=4)
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert not list((tmp_path / "train").glob("*.tmp"))

    ds = build_dataset(DataConfig("webdataset", path=str(tmp_path), split="train", image_size=12))
    assert isinstance(ds, WebDatasetShards)
    ds.shuffle_shards, ds.shuffle_buffer = False, 0
    items = list(ds)
    assert [it["label"] for it in items] == labels
    for it, img in zip(items, images, strict=True):
        assert torch.equal(it["image"], pil_to_tensor(img))  # PNG is lossless; 12 -> 12 is an identity resize

    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append([it["label"] for it in WebDatasetShards(str(tmp_path / "train" / "*.tar"), ImageTransform(12))])
    assert len(seen[0]) == 6 and len(seen[1]) == 4  # shards 0 (4) + 2 (2 items) on rank 0; shard 1 (4) on rank 1
    assert sorted(seen[0] + seen[1]) == sorted(labels)


def test_webdataset_skips_bad_samples(tmp_path: Path) -> None:
    import io
    import tarfile

    path = tmp_path / "mixed.tar"
    buf = io.BytesIO()
    _photo(8, 8).save(buf, format="PNG")
    with tarfile.open(path, "w") as tar:
        for name, payload in (("a.png", buf.getvalue()), ("a.cls", b"4"), ("b.png", b"garbage"), ("c.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    ds = WebDatasetShards(str(path), ImageTransform(size=8), max_skip_ratio=1.0)
    items = list(ds)
    assert [it["label"] for it in items] == [4]
    assert ds.num_skipped == 2 and ds.skipped["no image"] == ds.skipped["undecodable image"] == 1
    with pytest.raises(DatasetError, match=r"2 of 3 samples skipped .* no image 1, undecodable image 1"):
        list(WebDatasetShards(str(path), ImageTransform(size=8)))  # default max_skip_ratio 0.01
    with pytest.raises(DatasetError, match="not found"):
        WebDatasetShards(str(tmp_path / "missing.tar"))


# --------------------------------------------------------------------------- latent / token caches
class _StandInEncoder(torch.nn.Module):
    """[B,3,16,16] -> [B,4,4,4]: a fixed random conv, like a VAE encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 4, stride=4)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)


def test_latent_cache_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = _StandInEncoder()
    ds = SkimagePhotos("test", ImageTransform(size=16, random_resized_crop=(0.1, 0.5)), num_items=10)
    out = write_latent_cache(enc, ds, tmp_path / "lat", batch_size=3, shard_size=4)
    assert sorted(p.name for p in out.iterdir()) == [
        "index.json",
        "shard-000000.safetensors",
        "shard-000001.safetensors",
        "shard-000002.safetensors",
    ]
    cache = LatentCacheDataset(out)
    assert len(cache) == 10 and cache.meta["shape"] == [4, 4, 4]
    with torch.no_grad():
        for i in (0, 4, 9):
            expected = enc.encode(ds[i]["image"][None])[0]
            item = cache[i]
            torch.testing.assert_close(item["latents"], expected, rtol=1e-5, atol=1e-5)
            assert item["label"] == ds[i]["label"]
    with pytest.raises(DatasetError, match="not empty"):
        write_latent_cache(enc, ds, out, batch_size=3)


def test_latent_cache_failure_leaves_nothing(tmp_path: Path) -> None:
    def bad_encode(images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)  # not [B, C, h, w]

    ds = SkimagePhotos("test", ImageTransform(size=8, random_resized_crop=(0.1, 0.5)), num_items=4)
    with pytest.raises(DatasetError, match="expected"):
        write_latent_cache(bad_encode, ds, tmp_path / "lat", batch_size=2)
    assert list(tmp_path.iterdir()) == []


def test_token_shards_roundtrip(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "tokens": torch.randint(0, 64000, (b, 16), generator=g),
            "label": torch.arange(b),
            "caption": [f"caption {b} {i}" for i in range(b)],
        }
        for b in (5, 3, 4)
    ]
    out = write_token_shards(iter(batches), tmp_path / "tok", shard_size=5, meta={"vocab_size": 64000})
    ds = TokenShardDataset(out)
    assert len(ds) == 12 and ds.meta["vocab_size"] == 64000 and ds.meta["n_tokens"] == 16
    flat_tokens = torch.cat([b["tokens"] for b in batches])
    flat_labels = torch.cat([b["label"] for b in batches])
    flat_caps = [c for b in batches for c in b["caption"]]
    for i in range(12):
        item = ds[i]
        assert item["tokens"].dtype == torch.long and torch.equal(item["tokens"], flat_tokens[i])
        assert item["label"] == int(flat_labels[i]) and item["caption"] == flat_caps[i]
    # Without labels or captions.
    out2 = write_token_shards([{"tokens": torch.zeros(2, 4, dtype=torch.long)}], tmp_path / "tok2")
    item = TokenShardDataset(out2)[1]
    assert item["label"] == -1 and "caption" not in item
    with pytest.raises(DatasetError, match="integer tensor"):
        write_token_shards([{"tokens": torch.zeros(2, 4)}], tmp_path / "tok3")
    assert not (tmp_path / "tok3").exists()
    with pytest.raises(DatasetError, match="index.json is missing"):
        TokenShardDataset(tmp_path)
