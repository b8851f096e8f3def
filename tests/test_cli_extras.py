"""A missing optional dependency is a clean ``error:`` naming the extra to install, run in a Python where the
extra's packages cannot be imported (a meta-path finder refuses them, as if they were not installed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flexitok.cli.main import EXTRAS, missing_extra

ROOT = Path(__file__).resolve().parents[1]

# Runs the CLI with the named top-level packages unimportable (argv: blocked,comma,list then the CLI args).
WRAPPER = r"""
import sys
blocked = set(sys.argv[1].split(","))

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
from flexitok.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _run(blocked: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", WRAPPER, ",".join(blocked), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("blocked", "args", "extra"),
    [
        # The issue's case: the paper configs' REPA target is DINOv2 (transformers).
        (["transformers"], ["train", "tokenizer", "--config", "configs/tokenizer-d12-d12.yaml", "--dry-run"], "train"),
        (["webdataset"], ["pretokenize", "--data", "webdataset", "--data-path", "{shards}", "-o", "{tmp}/t"], "data"),
        (["fastapi", "uvicorn"], ["demo", "--port", "0"], "demo"),
    ],
    ids=["train-transformers", "pretokenize-webdataset", "demo-fastapi"],
)
def test_cli_without_an_extra_names_it(blocked, args, extra, tmp_path):
    shards = tmp_path / "shards"
    if "{shards}" in args:  # writing shards needs no webdataset; reading them does
        images = tmp_path / "images"
        images.mkdir()
        from PIL import Image

        Image.new("RGB", (8, 8)).save(images / "a.png")
        assert _run([], "shards", str(images), str(shards)).returncode == 0
    r = _run(blocked, *(a.format(tmp=tmp_path, shards=shards) for a in args))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    # (a progress bar may share the line: tqdm writes carriage returns, not newlines)
    clean = rf"(^|img/s\])error: .*pip install 'flexitok\[{extra}\]'"
    assert re.search(clean, r.stderr, re.M), r.stderr
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("package", sorted(EXTRAS))
def test_every_known_optional_package_maps_to_an_extra(package):
    err = missing_extra(ModuleNotFoundError(f"No module named '{package}'", name=f"{package}.sub"), "train")
    assert err is not None and "pip install 'flexitok[" in str(err) and package in str(err)


def test_other_import_errors_are_not_disguised():
    assert missing_extra(ModuleNotFoundError("No module named 'numpy'", name="numpy"), "train") is None
    assert missing_extra(ImportError("cannot import name 'x'"), "train") is None
    # A DataLoader worker re-raises with the message only.
    err = missing_extra(ModuleNotFoundError("No module named 'webdataset'"), "pretokenize")
    assert err is not None and "flexitok[data]" in str(err)
