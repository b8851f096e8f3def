"""webdataset shards under faults: streams that would spin, skipped samples counted per reason and reported,
the skip-ratio limit, out-of-range labels, captions of img2dataset-style shards, DataConfig field checks."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from flexitok.data import DataConfig, build_dataset
from flexitok.data.transforms import ImageTransform
from flexitok.data.webdataset import SHARD_INDEX, WebDatasetShards, write_webdataset_shards
from flexitok.errors import DatasetError

pytest.importorskip("webdataset")


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the body runs longer than ``seconds``."""

    def fire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s: the stream spins")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _png(seed: int, size: int = 8) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    """A tar of regular files; a ``None`` payload makes a symlink member (not a regular file)."""
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            if payload is None:
                info.type, info.linkname = tarfile.SYMTYPE, "elsewhere"
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def _drain(ds: WebDatasetShards, limit: int = 100_000) -> list[dict[str, Any]]:
    out = []
    for i, item in enumerate(ds):
        out.append(item)
        if i >= limit:
            break
    return out


def test_resampled_stream_of_undecodable_samples_stops(tmp_path: Path) -> None:
    shard = _tar(tmp_path / "bad.tar", [(f"{i}.jpg", b"not a jpeg") for i in range(5)])
    ds = WebDatasetShards(str(shard), ImageTransform(8), resampled=True, epoch_size=10**6, max_skip_ratio=1.0)
    with deadline(60), pytest.raises(DatasetError, match=r"1000 samples in a row could not be used.*bad\.tar"):
        _drain(ds)
    assert ds.skipped["undecodable image"] == 1000


def test_resampled_stream_whose_shards_disappear_stops(tmp_path: Path) -> None:
    imgs = [Image.open(io.BytesIO(_png(i))) for i in range(6)]
    shards = write_webdataset_shards(zip(imgs, range(6), strict=True), tmp_path / "s", shard_size=2)
    ds = WebDatasetShards(str(tmp_path / "s"), ImageTransform(8), resampled=True, epoch_size=10**6)
    it = iter(ds)
    next(it)
    for p in shards:
        p.unlink()
    with deadline(60), pytest.raises(DatasetError, match=r"shard draws in a row gave no sample.*shard-000000\.tar"):
        for _ in it:
            pass
    assert ds.skipped["unreadable shard"] >= 64


def test_skips_are_counted_per_reason_reported_and_carried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    good = [(f"g{i}.png", _png(i)) for i in range(12)] + [(f"g{i}.cls", b"1") for i in range(12)]
    good.sort()
    members: list[tuple[str, bytes | None]] = [
        ("a0.png", _png(1)),
        ("a0.cls", b"0"),
        ("b1.jpg", b"garbage"),  # undecodable image
        ("c2.png", _png(2)),
        ("c2.cls", b"cat"),  # not an integer
        ("d3.png", _png(3)),
        ("d3.cls", b"99999999999999999999"),  # beyond int64: used to crash the collate
        ("e4.png", _png(4)),
        ("e4.cls", b"7"),  # outside the 3 recorded classes
        ("f5.png", None),  # a symlink member: the sample has no image
        ("f5.cls", b"1"),
        ("h6.png", _png(6, size=64)),  # a decompression bomb under the lowered pixel limit below
        *good,
    ]
    _tar(tmp_path / "shard-000000.tar", members)
    index = {"wids_version": 1, "shardlist": [{"url": "shard-000000.tar", "nsamples": 19}], "class_names": list("abc")}
    (tmp_path / SHARD_INDEX).write_text(json.dumps(index))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 * 64 > 2 * 1000: DecompressionBombError
    ds = WebDatasetShards(str(tmp_path), ImageTransform(8), max_skip_ratio=0.5)
    assert ds.class_names == ["a", "b", "c"]
    with caplog.at_level(logging.WARNING, logger="flexitok.data.webdataset"):
        batches = list(DataLoader(ds, batch_size=13))
    expected = {
        "no image": 1,
        "undecodable image": 1,
        "decompression bomb": 1,
        "bad .cls": 1,
        "label out of range": 2,
        "unreadable shard": 0,
        "truncated shard": 0,
    }
    assert ds.skipped == expected
    (batch,) = batches
    assert batch["label"].tolist() == [0] + [1] * 12
    assert batch["skipped"].dtype == torch.int64 and batch["skipped"].shape == (13,)
    assert int(batch["skipped"].sum()) == 6 and batch["skipped"][1] == 6  # all between a0 and g0
    line = next(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert "13 sample(s) used, 6 skipped" in line and "label out of range 2" in line and "decompression bomb 1" in line

    # The same shard under the default 1% limit: the run stops at the end of the pass, with the reasons.
    strict = WebDatasetShards(str(tmp_path), ImageTransform(8))
    with pytest.raises(DatasetError, match=r"6 of 19 samples skipped .*max_skip_ratio 0.01.*bad \.cls 1"):
        list(strict)


def test_skip_ratio_is_checked_during_long_streams(tmp_path: Path) -> None:
    # 1 bad sample in 4: 25 % > 10 %, found after MIN_DRAWS_FOR_SKIP_RATIO draws of a resampled stream.
    members = [("a.png", _png(0)), ("b.jpg", b"x"), ("c.png", _png(1)), ("d.png", _png(2))]
    shard = _tar(tmp_path / "x.tar", members)
    ok = WebDatasetShards(str(shard), ImageTransform(8), resampled=True, epoch_size=600, max_skip_ratio=0.3)
    assert len(_drain(ok)) == 600
    ds = WebDatasetShards(str(shard), ImageTransform(8), resampled=True, epoch_size=10**6, max_skip_ratio=0.1)
    with deadline(60), pytest.raises(DatasetError, match=r"samples skipped \(25\.0% > data.max_skip_ratio 0.1\)"):
        _drain(ds)


def test_held_out_samples_never_reach_a_resampled_training_stream(tmp_path: Path) -> None:
    imgs = [Image.open(io.BytesIO(_png(i))) for i in range(12)]
    write_webdataset_shards(zip(imgs, range(12), strict=True), tmp_path, shard_size=4)  # labels = index
    cfg = DataConfig("webdataset", path=str(tmp_path), image_size=8, resampled=True, epoch_size=200, holdout=5)
    train = build_dataset(cfg)
    seen = {int(it["label"]) for it in train}  # type: ignore[attr-defined]
    # Held out: shard 2 entirely (labels 8-11), then the first sample of shard 1 (label 4).
    assert seen == {0, 1, 2, 3, 5, 6, 7}
    held = build_dataset(DataConfig("webdataset", path=str(tmp_path), image_size=8, holdout=5, holdout_only=True))
    assert sorted(int(it["label"]) for it in held) == [4, 8, 9, 10, 11]  # type: ignore[attr-defined]


def test_img2dataset_style_shards_with_captions(tmp_path: Path) -> None:
    members: list[tuple[str, bytes | None]] = [
        ("000000000.jpg", _jpeg(0)),
        ("000000000.txt", b"a red fox in the snow\n"),
        ("000000000.json", json.dumps({"caption": "ignored: .txt wins", "status": "success"}).encode()),
        ("000000001.jpg", _jpeg(1)),
        ("000000001.json", json.dumps({"caption": "two dogs", "key": "000000001"}).encode()),
        ("000000002.jpg", _jpeg(2)),
        ("000000002.json", b"{not json"),
    ]
    _tar(tmp_path / "00000.tar", members)
    (tmp_path / "00000.parquet").write_bytes(b"PAR1")  # img2dataset's side files are not shards
    (tmp_path / "00000_stats.json").write_text("{}")
    cfg = DataConfig("webdataset", path=str(tmp_path), image_size=8, captions=True, shuffle_buffer=0)
    items = list(build_dataset(cfg))  # type: ignore[call-overload]
    assert [it["caption"] for it in items] == ["a red fox in the snow", "two dogs", ""]
    assert [it["label"] for it in items] == [-1, -1, -1]
    batch = next(iter(DataLoader(build_dataset(cfg), batch_size=3)))  # type: ignore[arg-type]
    assert batch["caption"][1] == "two dogs" and batch["image"].shape == (3, 3, 8, 8)


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(_png(seed, 16))).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_size", 0),
        ("image_size", 1.5),
        ("image_size", True),
        ("image_size", "32"),
        ("image_size", 100_000),
        ("channel_shuffle", math.nan),
        ("channel_shuffle", 2.0),
        ("max_skip_ratio", -0.1),
        ("max_skip_ratio", math.nan),
        ("max_skip_ratio", math.inf),
        ("limit", 0),
        ("limit", 2**70),
        ("shuffle_buffer", -1),
        ("epoch_size", 0),
        ("holdout", -1),
        ("hflip", "yes"),
        ("resampled", 1),
        ("captions", "no"),
        ("path", 5),
        ("path", ""),
    ],
)
def test_data_config_fields_are_validated(field: str, value: Any) -> None:
    with pytest.raises(DatasetError, match=rf"data\.{field} must"):
        DataConfig("webdataset", **{field: value})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": ""}, "split must be a folder name"),
        ({"split": "a/b"}, "split must be a folder name"),
        ({"split": ".."}, "split must be a folder name"),
        ({"random_resized_crop": (math.nan, 1.0)}, "random_resized_crop"),
        ({"random_resized_crop": (0.5,)}, "random_resized_crop"),
        ({"holdout_only": True}, "holdout_only needs data.holdout"),
        ({"captions": True, "kind": "folder"}, "captions needs webdataset"),
    ],
)
def test_data_config_combinations_are_validated(kwargs: dict[str, Any], match: str) -> None:
    kwargs = {"kind": "webdataset", **kwargs}
    with pytest.raises(DatasetError, match=match):
        DataConfig(**kwargs)


def test_held_out_set_is_read_whole_on_every_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imgs = [Image.open(io.BytesIO(_png(i))) for i in range(12)]
    write_webdataset_shards(zip(imgs, range(12), strict=True), tmp_path, shard_size=4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # an evaluation on rank 1 of 2 still sees the whole held-out set
    held = build_dataset(DataConfig("webdataset", path=str(tmp_path), image_size=8, holdout=6, holdout_only=True))
    assert held.num_held_out == 6  # type: ignore[attr-defined]
    labels = [int(b) for batch in DataLoader(held, batch_size=4, num_workers=2) for b in batch["label"]]
    assert sorted(labels) == [4, 5, 8, 9, 10, 11]
    assert not hasattr(held, "__len__")


def test_truncated_and_missing_shards_are_counted_not_fatal(tmp_path: Path) -> None:
    imgs = [Image.open(io.BytesIO(_png(i, size=32))) for i in range(12)]
    shards = write_webdataset_shards(zip(imgs, range(12), strict=True), tmp_path, shard_size=4)
    ds = WebDatasetShards(str(tmp_path), ImageTransform(8), max_skip_ratio=1.0)
    strict = WebDatasetShards(str(tmp_path), ImageTransform(8))
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])  # cut on a block boundary: the tar just ends early
    shards[2].unlink()  # deleted mid-run
    labels = [int(it["label"]) for it in ds]
    assert labels[:4] == [0, 1, 2, 3] and 4 in labels and not {7, 8, 9, 10, 11} & set(labels)
    # The shard index says how many samples each shard holds: what did not come is counted, not silently lost.
    assert ds.skipped["truncated shard"] == 12 - len(labels) and ds.skipped["unreadable shard"] == 1
    with pytest.raises(DatasetError, match=r"unreadable shard 1, truncated shard 5; shards .*shard-000000.tar"):
        list(strict)


def test_skip_ratio_error_reaches_the_main_process_from_a_loader_worker(tmp_path: Path) -> None:
    members = [(f"{i}.png", _png(i)) for i in range(4)] + [("9.jpg", b"broken")]
    shard = _tar(tmp_path / "w.tar", members)
    loader = DataLoader(WebDatasetShards(str(shard), ImageTransform(8)), batch_size=2, num_workers=1)
    with deadline(120), pytest.raises(DatasetError, match=r"1 of 5 samples skipped \(20\.0%"):
        list(loader)


def test_holdout_without_a_shard_index_counts_the_shards(tmp_path: Path) -> None:
    imgs = [Image.open(io.BytesIO(_png(i))) for i in range(6)]
    write_webdataset_shards(zip(imgs, range(6), strict=True), tmp_path, shard_size=4)
    (tmp_path / SHARD_INDEX).unlink()  # shards from another tool: no index
    held = WebDatasetShards(str(tmp_path), ImageTransform(8), holdout=3, holdout_only=True)
    assert sorted(int(it["label"]) for it in held) == [0, 4, 5]  # the last shard (2 samples), then shard 0
    train = WebDatasetShards(str(tmp_path), ImageTransform(8), holdout=3)
    assert sorted(int(it["label"]) for it in train) == [1, 2, 3]
    with pytest.raises(DatasetError, match="cannot hold out 6 samples"):
        WebDatasetShards(str(tmp_path), ImageTransform(8), holdout=6)
