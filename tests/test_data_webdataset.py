"""webdataset shards at scale: rank/worker splits, shuffle buffer, resampled shards, mid-epoch skip, exact resume of a
training run on shards, writing shards from an image folder (Python and CLI)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from flexitok.data import DataConfig, build_dataset
from flexitok.data.transforms import ImageTransform, pil_to_tensor
from flexitok.data.webdataset import SHARD_INDEX, WebDatasetShards, write_folder_shards, write_webdataset_shards
from flexitok.errors import DatasetError

pytest.importorskip("webdataset")


def _image(seed: int, size: int = 8) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wds")
    write_webdataset_shards(((_image(i), i) for i in range(48)), out, shard_size=6)  # 8 shards, label = index
    return out


def _labels(ds: WebDatasetShards, num_workers: int = 0) -> list[int]:
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
    return [int(item["label"]) for item in loader]


def test_split_by_rank_and_worker_is_a_partition(shard_dir: Path) -> None:
    seen = []
    for rank in range(2):
        ds = WebDatasetShards(str(shard_dir), ImageTransform(8), rank=rank, world_size=2)
        seen.append(_labels(ds, num_workers=2))
    assert len(seen[0]) == len(seen[1]) == 24
    assert sorted(seen[0] + seen[1]) == list(range(48))
    # Readers (rank * workers + worker) take every 4th shard: rank 0 / worker 0 holds shards 0 and 4.
    assert set(range(0, 6)) | set(range(24, 30)) <= set(seen[0])


def test_shuffle_buffer_and_shard_shuffle_are_seeded_per_epoch(shard_dir: Path) -> None:
    ds = WebDatasetShards(str(shard_dir), ImageTransform(8), shuffle_shards=True, shuffle_buffer=16, seed=3)
    first = _labels(ds)
    assert sorted(first) == list(range(48)) and first != list(range(48))
    assert _labels(ds) == first  # same epoch, same order
    # Samples move beyond their shard: within the first 6 outputs, more than one shard is represented.
    assert len({label // 6 for label in first[:6]}) > 1
    ds.set_epoch(1)
    assert _labels(ds) != first


def test_resampled_shards_draw_with_replacement_and_epoch_size_from_the_index(shard_dir: Path, tmp_path: Path) -> None:
    assert json.loads((shard_dir / SHARD_INDEX).read_text())["shardlist"][0] == {
        "url": "shard-000000.tar",
        "nsamples": 6,
    }
    ds = WebDatasetShards(str(shard_dir), ImageTransform(8), resampled=True, rank=0, world_size=2)
    got = _labels(ds)
    assert len(got) == 24  # 48 indexed samples / 2 ranks
    assert _labels(ds) == got
    ds.set_epoch(1)
    assert _labels(ds) != got
    ds = WebDatasetShards(str(shard_dir), ImageTransform(8), resampled=True, epoch_size=200)
    many = _labels(ds, num_workers=2)
    assert len(many) == 200 and len(set(many)) < 200  # with replacement: repeats
    lone = tmp_path / "lone.tar"
    lone.write_bytes((shard_dir / "shard-000000.tar").read_bytes())  # no shard index beside it
    with pytest.raises(DatasetError, match="epoch size"):
        list(WebDatasetShards(str(lone), resampled=True, rank=0, world_size=1))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("skip", [1, 3, 4])
def test_skip_batches_continues_the_same_stream(shard_dir: Path, num_workers: int, skip: int) -> None:
    transform = ImageTransform(8, random_resized_crop=(0.3, 1.0), hflip=True)

    def batches(ds: WebDatasetShards) -> list[tuple[list[int], torch.Tensor]]:
        loader = DataLoader(ds, batch_size=4, num_workers=num_workers, drop_last=True)
        return [(b["label"].tolist(), b["image"]) for b in loader]

    ds = WebDatasetShards(str(shard_dir), transform, shuffle_shards=True, shuffle_buffer=8, seed=1)
    full = batches(ds)
    ds.skip_batches(skip, batch_size=4, num_workers=num_workers)
    rest = batches(ds)
    assert len(rest) == len(full) - skip
    for (la, xa), (lb, xb) in zip(full[skip:], rest, strict=True):
        assert la == lb and torch.equal(xa, xb)  # same samples, same random crops


def test_bad_samples_are_skipped_and_counted(tmp_path: Path) -> None:
    buf = io.BytesIO()
    _image(0).save(buf, format="PNG")
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        for name, payload in (
            ("x.png", buf.getvalue()),
            ("x.cls", b"2"),
            ("y.jpg", b"nope"),
            ("z.png", buf.getvalue()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    ds = WebDatasetShards(str(tmp_path / "a.tar"), ImageTransform(8), max_skip_ratio=0.5)
    items = list(ds)
    assert [it["label"] for it in items] == [2, -1] and ds.num_skipped == 1
    assert [it["skipped"] for it in items] == [0, 1]  # z.png comes after the skipped y.jpg


def test_build_dataset_options(shard_dir: Path) -> None:
    cfg = DataConfig("webdataset", path=str(shard_dir), image_size=8, shuffle_buffer=5, resampled=True, epoch_size=7)
    ds = build_dataset(cfg)
    assert isinstance(ds, WebDatasetShards) and ds.shuffle_buffer == 5 and ds.resampled and ds.epoch_size == 7
    with pytest.raises(DatasetError, match="split 'test' not found"):
        build_dataset(DataConfig("webdataset", path=str(shard_dir), split="test", image_size=8))
    held = DataConfig("webdataset", path=str(shard_dir), image_size=8, resampled=True, holdout=3, holdout_only=True)
    test = build_dataset(held)
    assert test.shuffle_buffer == 0 and not test.resampled and not test.shuffle_shards
    assert [it["label"] for it in test] == [42, 43, 44]  # the first samples of the last shard
    with pytest.raises(DatasetError, match="shuffle_buffer"):
        DataConfig("webdataset", shuffle_buffer=-1)


def _folder(root: Path) -> Path:
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            _image(10 * c + i, size=12).save(root / cls / f"{i}.png")
    _image(99, size=20).convert("L").save(root / "dog" / "gray.tiff")
    (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_write_folder_shards_keeps_bytes_and_labels(tmp_path: Path) -> None:
    src = _folder(tmp_path / "imgs")
    shards, skipped = write_folder_shards(src, tmp_path / "out", shard_size=3)
    assert skipped == 1 and len(shards) == 3
    index = json.loads((tmp_path / "out" / SHARD_INDEX).read_text())
    assert [e["nsamples"] for e in index["shardlist"]] == [3, 3, 1]
    items = list(WebDatasetShards(str(tmp_path / "out"), ImageTransform(12)))
    assert sorted(it["label"] for it in items) == [0, 0, 0, 1, 1, 1, 1]
    pngs = {tuple(pil_to_tensor(_image(10 * c + i, 12)).flatten()[:20].tolist()): c for c in (0, 1) for i in range(3)}
    matched = [it for it in items if tuple(it["image"].flatten()[:20].tolist()) in pngs]
    assert len(matched) == 6  # PNG bytes stored unchanged: exact pixels
    with tarfile.open(shards[0]) as tar:
        names = tar.getnames()
    assert any(n.endswith(".png") for n in names) and any(n.endswith(".cls") for n in names)

    resized, _ = write_folder_shards(src, tmp_path / "small", shard_size=100, max_side=6)
    with tarfile.open(resized[0]) as tar:
        exts = {n.rsplit(".", 1)[1] for n in tar.getnames()}
        first = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        img = Image.open(io.BytesIO(tar.extractfile(first).read()))  # type: ignore[union-attr]
    assert exts == {"jpg", "cls", "json"} and img.size == (6, 6)


def test_shards_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flexitok.cli.main import main

    src = tmp_path / "data"
    _folder(src / "train")
    _folder(src / "test")
    assert main(["shards", str(src), str(tmp_path / "out"), "--shard-size", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "train: 7 samples in 2 shard(s), 2 classes" in printed and "skipped 1 unreadable" in printed
    assert "test: 7 samples in 2 shard(s), 2 classes" in printed
    ds = build_dataset(DataConfig("webdataset", path=str(tmp_path / "out"), split="test", image_size=8))
    assert len(list(ds)) == 7
    assert main(["shards", str(src), str(tmp_path / "out")]) == 2  # refuses to mix with existing shards
    assert main(["shards", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2
    assert "error:" in capsys.readouterr().err


class _Killed(Exception):
    pass


def test_training_on_shards_resumes_exactly(shard_dir: Path, tmp_path: Path, one_thread: None) -> None:
    from flexitok.config import tiny_config
    from flexitok.models.flextok import FlexTok
    from flexitok.train.tokenizer import TokenizerTask, TokenizerTaskConfig
    from flexitok.train.trainer import TrainerConfig, train

    class KillableTask(TokenizerTask):
        kill_at: int | None = None

        def loss(self, batch, step):  # type: ignore[no-untyped-def]
            if step == self.kill_at:
                raise _Killed
            return super().loss(batch, step)

    def run(out: Path, kill_at: int | None = None, resume: bool = False) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = FlexTok(tiny_config(image_size=8, n_registers=4, dim=32, depth=1))
        ds = WebDatasetShards(
            str(shard_dir), ImageTransform(8, random_resized_crop=(0.5, 1.0)), shuffle_shards=True, shuffle_buffer=8
        )
        cfg = TrainerConfig(
            out_dir=str(out), steps=15, batch_size=4, lr=1e-3, log_every=1, ckpt_every=3, progress=False, resume=resume
        )
        task = KillableTask(model, TokenizerTaskConfig())
        task.kill_at = kill_at
        train(task, ds, cfg)
        return {k: v.clone() for k, v in model.state_dict().items()}

    straight = run(tmp_path / "a")  # 12 batches per epoch: the resumed part crosses an epoch boundary
    with pytest.raises(_Killed):
        run(tmp_path / "b", kill_at=7)  # last checkpoint: step 6, mid-epoch
    resumed = run(tmp_path / "b", resume=True)
    for k, v in straight.items():
        assert torch.equal(v, resumed[k]), k
