"""Training targets are library objects run by one runner; the classifier trains through the common trainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flexitok.cli.main import main
from flexitok.models.classifier import SmallCNN

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_classifier_command_runs_through_the_trainer(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, cls in enumerate(("dark", "light")):
            d = tmp_path / "data" / split / cls
            d.mkdir(parents=True)
            for i in range(6):
                px = rng.integers(0, 60, (12, 12, 3)) + 190 * c
                Image.fromarray(px.astype(np.uint8)).save(d / f"{i}.png")
    out = tmp_path / "clf"
    argv = ["train", "classifier", "--data", "folder", "--data-path", str(tmp_path / "data"), "--image-size", "16"]
    argv += ["--steps", "4", "--batch-size", "4", "--width", "8", "-o", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "test accuracy" in captured.err + captured.out
    model = SmallCNN.from_pretrained(out)
    assert model.config.num_classes == 2 and model.config.image_size == 16
    assert model.config.class_names == ("dark", "light")  # the class folders' names
    assert main(argv) == 0  # the same command again overwrites the model folder (no run folder left behind)


def test_dry_run_without_transformers_raises_module_not_found_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `train` extra missing: the CLI maps a ModuleNotFoundError naming transformers to an install hint."""
    import sys

    from flexitok.train.estimate import dry_run

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    root = Path(__file__).resolve().parents[1]
    with pytest.raises(ModuleNotFoundError) as e:
        dry_run(str(root / "configs" / "tokenizer-d12-d12.yaml"), [], 8)
    assert e.value.name == "transformers"
