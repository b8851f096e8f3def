"""Splits of an ImageNet-style tree (root/{train,val}/<class>/*), the class mapping they share, and
``eval_source`` (a held-out split, else a fixed held-out set never trained on)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexitok.data import DataConfig, DatasetError, HeldOut, build_dataset, eval_source
from flexitok.data.splits import list_splits

CLASSES = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475")
MODES = ("RGB", "L", "RGBA", "P")
EXTS = (".jpg", ".JPEG", ".png")


def _image(seed: int, mode: str, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return rgb.convert(mode)


def make_tree(root: Path, per_class: dict[str, int], classes: tuple[str, ...] = CLASSES) -> Path:
    """``root/<split>/<class>/*.{jpg,JPEG,png}`` with mixed sizes and modes (JPEG files get RGB or L)."""
    seed = 0
    for split, n in per_class.items():
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed += 1
                ext = EXTS[seed % len(EXTS)]
                mode = MODES[seed % len(MODES)]
                if ext != ".png" and mode not in ("RGB", "L"):
                    mode = "RGB"
                size = (12 + 5 * (seed % 4), 10 + 3 * (seed % 5))
                fmt = "PNG" if ext == ".png" else "JPEG"
                _image(seed, mode, size).save(root / split / c / f"{c}_{i}{ext}", format=fmt)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("imagenet"), {"train": 4, "val": 2})


def test_any_existing_split_is_read_and_labels_follow_class_folders(tree: Path) -> None:
    train = build_dataset(DataConfig("folder", path=str(tree), split="train", image_size=16))
    val = build_dataset(DataConfig("folder", path=str(tree), split="val", image_size=16))
    assert len(train) == 4 * len(CLASSES) and len(val) == 2 * len(CLASSES)  # type: ignore[arg-type]
    assert train.class_names == val.class_names == sorted(CLASSES)
    for ds in (train, val):
        for i in range(len(ds)):  # type: ignore[arg-type]
            item = ds[i]
            path = ds.paths[i]  # type: ignore[attr-defined]
            assert item["image"].shape == (3, 16, 16)
            assert ds.class_names[item["label"]] == path.parent.name  # type: ignore[attr-defined]


def test_missing_split_is_an_error_naming_the_existing_ones(tree: Path) -> None:
    with pytest.raises(DatasetError, match=r"split 'test' not found .*: train, val"):
        build_dataset(DataConfig("folder", path=str(tree), split="test", image_size=16))
    with pytest.raises(DatasetError, match="folder name"):
        DataConfig("folder", path=str(tree), split="../train")


def test_one_class_mapping_shared_by_all_splits(tmp_path: Path) -> None:
    # val lacks the first class: its labels must still be train's ids, not a re-numbering of its own folders.
    make_tree(tmp_path, {"train": 1}, classes=CLASSES)
    make_tree(tmp_path, {"val": 1}, classes=CLASSES[1:])
    val = build_dataset(DataConfig("folder", path=str(tmp_path), split="val", image_size=8))
    assert val.class_names == sorted(CLASSES)  # type: ignore[attr-defined]
    labels = sorted(val[i]["label"] for i in range(len(val)))  # type: ignore[arg-type]
    assert labels == [1, 2, 3, 4]


def test_hidden_files_and_folders_are_not_images_or_classes(tmp_path: Path) -> None:
    make_tree(tmp_path, {"train": 1, "val": 1}, classes=CLASSES[:2])
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    _image(0, "RGB", (8, 8)).save(tmp_path / "train" / ".ipynb_checkpoints" / "x.png")
    _image(0, "RGB", (8, 8)).save(tmp_path / "train" / CLASSES[0] / "._x.png")  # macOS resource fork name
    ds = build_dataset(DataConfig("folder", path=str(tmp_path), image_size=8))
    assert ds.class_names == list(CLASSES[:2]) and len(ds) == 2  # type: ignore[arg-type,attr-defined]


def test_root_without_split_folders_is_train_only(tmp_path: Path) -> None:
    make_tree(tmp_path / "flat", {"": 1})  # flat/<class>/*: no split folders
    root = tmp_path / "flat"
    assert list_splits(root) == []
    ds = build_dataset(DataConfig("folder", path=str(root), split="train", image_size=8))
    assert len(ds) == len(CLASSES) and ds.class_names == sorted(CLASSES)  # type: ignore[arg-type,attr-defined]
    with pytest.raises(DatasetError, match="no split folders.*'train' only"):
        build_dataset(DataConfig("folder", path=str(root), split="val", image_size=8))


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file(), reason="no Fashion-MNIST"
)
def test_fashion_mnist_has_train_and_test_only() -> None:
    with pytest.raises(DatasetError, match="'train' or 'test'"):
        build_dataset(DataConfig("fashion_mnist", split="val"))
    train_cfg, eval_cfg, how = eval_source(DataConfig("fashion_mnist", limit=100), 10)
    assert eval_cfg.split == "test" and "'test'" in how and train_cfg.holdout == 0
    assert len(build_dataset(eval_cfg)) == 10  # type: ignore[arg-type]


def test_eval_source_prefers_the_val_split(tree: Path) -> None:
    cfg = DataConfig("folder", path=str(tree), image_size=16, hflip=True, random_resized_crop=(0.5, 1.0))
    train_cfg, eval_cfg, how = eval_source(cfg, 6)
    assert train_cfg == cfg and eval_cfg.split == "val" and "'val'" in how
    assert not eval_cfg.hflip and eval_cfg.random_resized_crop is None
    ev = build_dataset(eval_cfg)
    assert len(ev) == 6  # type: ignore[arg-type]
    # A seeded random choice over val (not its first class), the same every time.
    again = build_dataset(eval_cfg)
    assert [ev[i]["label"] for i in range(6)] == [again[i]["label"] for i in range(6)]
    assert len({ev[i]["label"] for i in range(6)}) > 1
    assert torch.equal(ev[0]["image"], again[0]["image"])


def test_eval_source_holds_out_a_fixed_set_without_a_sibling_split(tmp_path: Path) -> None:
    make_tree(tmp_path / "only", {"train": 3})
    cfg = DataConfig("folder", path=str(tmp_path / "only"), image_size=8, limit=100)
    train_cfg, eval_cfg, how = eval_source(cfg, 4)
    assert "held out" in how and eval_cfg.split == "train" and eval_cfg.holdout_only
    train, ev = build_dataset(train_cfg), build_dataset(eval_cfg)
    assert isinstance(train, HeldOut) and isinstance(ev, HeldOut)
    assert len(ev) == 4 and len(train) == 3 * len(CLASSES) - 4
    assert not set(train.indices) & set(ev.indices)  # never trained on
    assert set(train.indices) | set(ev.indices) == set(range(3 * len(CLASSES)))
    assert ev.indices == build_dataset(eval_cfg).indices  # type: ignore[attr-defined]
    with pytest.raises(DatasetError, match="cannot hold out 15 of 15"):
        eval_source(cfg, 15)


def test_eval_source_on_shards_with_and_without_val(tmp_path: Path, tree: Path) -> None:
    from flexitok.cli.main import main

    assert main(["shards", str(tree), str(tmp_path / "s"), "--shard-size", "4", "--no-progress"]) == 0
    cfg = DataConfig("webdataset", path=str(tmp_path / "s"), image_size=8, shuffle_buffer=0)
    _, eval_cfg, how = eval_source(cfg, 5)
    assert eval_cfg.split == "val" and "'val'" in how
    ev = list(build_dataset(eval_cfg))  # type: ignore[call-overload]
    assert len(ev) == 5
    names = json.loads((tmp_path / "s" / "classes.json").read_text())["class_names"]
    assert names == sorted(CLASSES) and build_dataset(cfg).class_names == names  # type: ignore[attr-defined]

    # Only a train shard folder: hold out the first 5 samples of the last shards, never trained on.
    only = DataConfig("webdataset", path=str(tmp_path / "s" / "train"), image_size=8, shuffle_buffer=0)
    train_cfg, eval_cfg, how = eval_source(only, 6)
    assert "held out" in how
    held = list(build_dataset(eval_cfg))  # type: ignore[call-overload]
    rest = list(build_dataset(train_cfg))  # type: ignore[call-overload]
    assert len(held) == 6 and len(rest) == 4 * len(CLASSES) - 6
    keys = {tuple(x["image"].flatten()[:32].tolist()) for x in held}
    assert not keys & {tuple(x["image"].flatten()[:32].tolist()) for x in rest}
    with pytest.raises(DatasetError, match="cannot hold out"):
        eval_source(only, 4 * len(CLASSES))


def test_shards_cli_writes_every_split_with_class_names_and_file_names(
    tmp_path: Path, tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import tarfile

    from flexitok.cli.main import main

    out = tmp_path / "out"
    assert main(["shards", str(tree), str(out), "--shard-size", "8", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"train: 20 samples in 3 shard(s), 5 classes -> {out / 'train'}" in printed
    assert f"val: 10 samples in 2 shard(s), 5 classes -> {out / 'val'}" in printed
    for split in ("train", "val"):
        index = json.loads((out / split / "shardindex.json").read_text())
        assert index["class_names"] == sorted(CLASSES)
        records = []
        where = {}
        for entry in index["shardlist"]:
            with tarfile.open(out / split / entry["url"]) as tar:
                for m in tar.getmembers():
                    if m.name.endswith(".json"):
                        records.append(json.loads(tar.extractfile(m).read()))  # type: ignore[union-attr]
                        where[(entry["url"], m.name.split(".")[0])] = records[-1]["file"]
        # Every original file once, with the label of its class folder in the shared mapping.
        files = sorted(str(p.relative_to(tree)) for p in (tree / split).rglob("*.*"))
        assert sorted(r["file"] for r in records) == files
        # ... also listed beside the index, with the shard and key that hold it.
        assert index["samples"] == "samples.jsonl"
        lines = [json.loads(x) for x in (out / split / "samples.jsonl").read_text().splitlines()]
        assert sorted(r["file"] for r in lines) == files
        assert {(r["shard"], r["key"]): r["file"] for r in lines} == where
        assert sorted((r["file"], r["label"]) for r in lines) == sorted((r["file"], r["label"]) for r in records)
        assert all(sorted(CLASSES)[r["label"]] == r["file"].split("/")[1] for r in records)


def test_shards_cli_refuses_an_empty_split_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flexitok.cli.main import main

    make_tree(tmp_path / "src", {"train": 1})
    (tmp_path / "src" / "val" / "n01440764").mkdir(parents=True)  # a split folder without images
    assert main(["shards", str(tmp_path / "src"), str(tmp_path / "out"), "--no-progress"]) == 2
    assert "no images under" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_explicit_shard_files_are_read_as_given_for_any_split(tmp_path: Path, tree: Path) -> None:
    from flexitok.cli.main import main

    assert main(["shards", str(tree), str(tmp_path / "s"), "--shard-size", "4", "--no-progress"]) == 0
    one = str(tmp_path / "s" / "val" / "shard-000000.tar")  # what pretokenize does per input tar
    ds = build_dataset(DataConfig("webdataset", path=one, split="val", image_size=8, shuffle_buffer=10))
    assert len(list(ds)) == 4 and not ds.shuffle_shards and ds.shuffle_buffer == 0  # type: ignore[call-overload,attr-defined]
    cfg = DataConfig("webdataset", path=str(tmp_path / "s" / "train" / "*.tar"), image_size=8)
    _, eval_cfg, how = eval_source(cfg, 3)
    assert eval_cfg.holdout_only and "held out" in how  # a pattern has no sibling split: hold out samples
