"""docs/tutorial-imagenet-layout.md runs as written: its shell blocks (all but the paper-scale ones), in order, as
one bash script on a generated ImageNet-style tree (4 classes, mixed formats, sizes and modes), with ``flexitok``
being ``python -m flexitok`` of this checkout."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.tree_support import CLASS_NAMES, make_imagenet_tree

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "tutorial-imagenet-layout.md"


def tutorial_script() -> str:
    """The page's bash blocks except those whose first line is ``# paper scale...``, joined in page order."""
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), re.S)
    kept = [b for b in blocks if not b.lstrip().startswith("# paper scale")]
    assert kept and kept[0].startswith("# tiny scale"), "the tiny-scale block must come first among the run blocks"
    return "\n".join(kept)


def test_the_page_has_a_paper_block_and_a_tiny_block_setting_the_same_variables() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), re.S)
    names = [set(re.findall(r"^export (\w+)=", b, re.M)) for b in blocks[:2]]
    assert blocks[0].startswith("# paper scale") and blocks[1].startswith("# tiny scale")
    assert names[0] == names[1] and len(names[0]) > 10


@pytest.mark.slow
def test_tutorial_runs_end_to_end_at_tiny_scale(tmp_path: Path) -> None:
    make_imagenet_tree(tmp_path / "imagenet")
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the page's configs/ paths are relative to a checkout
    prelude = f'set -euo pipefail\nflexitok() {{ {shlex.quote(sys.executable)} -m flexitok "$@"; }}\n'
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", "-c", prelude + tutorial_script()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    work = tmp_path / "work"

    # 1. shards: both splits, one class mapping
    assert "val: 8 samples in 1 shard(s), 4 classes" in out
    assert json.loads((work / "shards" / "classes.json").read_text())["class_names"] == list(CLASS_NAMES)
    assert (work / "shards" / "val" / "shardindex.json").is_file()
    # 2. the VAE's scaling factor, read by the tokenizer (scaling_factor: auto)
    stats = json.loads((work / "runs" / "vae" / "vae" / "latent_stats.json").read_text())
    assert f"scaling_factor: {stats['scaling_factor']}" in (work / "runs" / "tokenizer" / "config.yaml").read_text()
    # 3. training-time evaluation on val, per k
    assert "split 'val' of" in out
    evals = [json.loads(r) for r in (work / "runs" / "tokenizer" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in evals if "eval/psnr_k1" in r][-1]
    assert {"eval/psnr_k1", "eval/psnr_k2", "eval/psnr_k8", "eval/fd_k8"} <= set(last)
    # 4. eval tokenizer: one row per k, with the reference column
    rows = json.loads((work / "eval" / "tokenizer" / "results.json").read_text())
    assert re.search(r"^\| 8 \| [\d.]+ \|", out, re.M), out[-3000:]
    assert "8 |" in (work / "eval" / "tokenizer" / "results.md").read_text() and rows
    # 5. token shards with the class names
    meta = json.loads((work / "tokens" / "train" / "index.json").read_text())["meta"]
    assert meta["class_names"] == list(CLASS_NAMES) and meta["num_classes"] == 4 and meta["split"] == "train"
    # 6-7. the generator knows the names; an image for a class NAME
    assert (work / "samples" / f"{CLASS_NAMES[0]}.png").stat().st_size > 0
    # 8. ADM-format sample npz and the metrics line
    (npz,) = (work / "samples" / "gen").glob("tokens8_cfg1*/samples_8x32x32x3.npz")
    assert np.load(npz)["arr_0"].shape == (8, 32, 32, 3) and np.load(npz)["arr_0"].dtype == np.uint8
    assert re.search(r"^\s+8\s+1\s+[\d.]+\s+[\d.]+\s+[\d.]+\s*$", out, re.M), out[-3000:]
    assert json.loads((work / "eval" / "generator.json").read_text())


def test_pretokenize_reads_the_val_split_of_a_shard_folder(tmp_path: Path) -> None:
    """Step 5 on `val`: each input tar of OUT/val used to be re-read as split 'val' of itself (an error)."""
    import torch

    from flexitok.cli.main import main
    from flexitok.config import tiny_config
    from flexitok.data.tokens import TokenShardDataset
    from flexitok.models.flextok import FlexTok

    make_imagenet_tree(tmp_path / "imagenet", per_class={"train": 1, "val": 2})
    assert main(["shards", str(tmp_path / "imagenet"), str(tmp_path / "shards"), "--no-progress"]) == 0
    torch.manual_seed(0)
    FlexTok(tiny_config(image_size=16, n_registers=4, dim=32, depth=1)).save_pretrained(tmp_path / "tok")
    argv = ["pretokenize", "--model", str(tmp_path / "tok"), "--data", "webdataset", "--device", "cpu"]
    argv += ["--data-path", str(tmp_path / "shards"), "--split", "val", "-o", str(tmp_path / "tokens"), "--resume"]
    assert main(argv) == 0
    ds = TokenShardDataset(tmp_path / "tokens")
    assert len(ds) == 8 and ds.class_names == list(CLASS_NAMES) and ds.meta["split"] == "val"
    assert sorted(int(ds[i]["label"]) for i in range(8)) == [0, 0, 1, 1, 2, 2, 3, 3]
