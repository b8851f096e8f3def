"""Token shard sets: class names in the metadata (contract 3), validation of damaged sets, pretokenize at scale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from flexitok.cli.main import main
from flexitok.config import tiny_config
from flexitok.data.base import DatasetError
from flexitok.data.tokens import TokenShardDataset, write_token_shards
from flexitok.models.flextok import FlexTok


def _batches(n: int = 12, b: int = 4, n_tokens: int = 8, classes: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {"tokens": torch.randint(0, 1000, (b, n_tokens), generator=g), "label": torch.arange(i, i + b) % classes}
        for i in range(0, n, b)
    ]


def test_class_names_roundtrip_and_checks(tmp_path: Path) -> None:
    out = write_token_shards(_batches(), tmp_path / "tok", shard_size=5, class_names=["cat", "dog", "fox"])
    ds = TokenShardDataset(out)
    assert ds.class_names == ["cat", "dog", "fox"] and ds.num_classes == 3
    assert ds.meta["class_names"] == ["cat", "dog", "fox"] and ds.meta["num_classes"] == 3
    # A count without names; no classes at all reads as None.
    ds2 = TokenShardDataset(write_token_shards(_batches(), tmp_path / "tok2", num_classes=3))
    assert ds2.class_names is None and ds2.num_classes == 3
    ds3 = TokenShardDataset(write_token_shards(_batches(), tmp_path / "tok3"))
    assert ds3.class_names is None and ds3.num_classes is None
    with pytest.raises(DatasetError, match="num_classes=4 but 3 class_names"):
        write_token_shards(_batches(), tmp_path / "bad1", class_names=["a", "b", "c"], num_classes=4)
    with pytest.raises(DatasetError, match=r"labels must lie in \[-1, 2\)"):
        write_token_shards(_batches(), tmp_path / "bad2", class_names=["a", "b"])
    with pytest.raises(DatasetError, match="duplicates"):
        write_token_shards(_batches(), tmp_path / "bad3", class_names=["a", "a", "b"])
    assert not any((tmp_path / f"bad{i}").exists() for i in (1, 2, 3))


def test_old_index_with_names_in_meta_only_still_reads(tmp_path: Path) -> None:
    out = write_token_shards(_batches(), tmp_path / "tok")
    index = json.loads((out / "index.json").read_text())
    del index["meta"]["class_names"], index["meta"]["num_classes"]
    index["meta"]["class_names"] = ["a", "b", "c"]  # the 0.1.0 pretokenize wrote names only (Fashion-MNIST)
    (out / "index.json").write_text(json.dumps(index))
    ds = TokenShardDataset(out)
    assert ds.class_names == ["a", "b", "c"] and ds.num_classes == 3


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    torch.manual_seed(0)
    cfg = tiny_config(image_size=16, n_registers=8, dim=32, depth=1)
    cfg.fsq_levels = (5, 5, 4)
    FlexTok(cfg).save_pretrained(root / "tok")
    return root / "tok"


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/train/<class>/*.png, 4 classes x 3 images of 20x24 (mixed with RGBA and L)."""
    root = tmp_path_factory.mktemp("imgs")
    g = torch.Generator().manual_seed(1)
    for c, name in enumerate(["ant", "bee", "cow", "dog"]):
        d = root / "train" / name
        d.mkdir(parents=True)
        for i in range(3):
            arr = torch.randint(0, 256, (20, 24, 3), generator=g, dtype=torch.uint8).numpy()
            mode = ("RGB", "RGBA", "L")[(c + i) % 3]
            Image.fromarray(arr).convert(mode).save(d / f"{i}.png")
    return root


def test_pretokenize_records_folder_class_names(tiny_tokenizer: Path, image_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    args = ["pretokenize", "--model", str(tiny_tokenizer), "--data", "folder", "--data-path", str(image_tree)]
    assert main([*args, "--batch-size", "5", "-o", str(out), "--device", "cpu"]) == 0
    ds = TokenShardDataset(out)
    assert len(ds) == 12 and ds.class_names == ["ant", "bee", "cow", "dog"] and ds.num_classes == 4
    assert sorted({ds[i]["label"] for i in range(12)}) == [0, 1, 2, 3]
