"""Fault injection over every file of the training-checkpoint layouts that tests/test_train_integrity.py does not
build (#11): the FSDP sharded layout (``sharded/`` DCP files and their ``.metadata``) and the VAE task with a GAN
discriminator (its own weights and optimizer). For each layout: every file on disk is listed in the hashed
manifest, and one flipped byte in any file makes resume refuse (``--no-fallback``) naming that file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flexitok.errors import CheckpointError
from flexitok.train.checkpointing.files import MANIFEST, read_manifest, resolve_last
from flexitok.train.trainer import TrainerConfig, train
from flexitok.train.vae import VAETask, VAETaskConfig
from tests.test_train_fsdp import Regression, RegressionTask
from tests.test_train_fsdp import _cfg as fsdp_cfg
from tests.test_train_vae import Blobs, _vae

pytestmark = pytest.mark.usefixtures("one_thread")


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _files_on_disk(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _check_every_file(run: Path, tmp: Path, resume) -> list[str]:
    """Flip a byte in each file of ``run``'s last checkpoint in turn; ``resume(copy)`` must refuse every one."""
    last = resolve_last(run)
    assert last is not None
    files = _files_on_disk(last)
    assert sorted([*read_manifest(last)["files"], MANIFEST]) == files  # nothing escapes the hashes
    for rel in files:
        copy = tmp / f"flip-{rel.replace('/', '_')}"
        shutil.copytree(run, copy, symlinks=True)
        _flip_middle(resolve_last(copy) / rel)  # type: ignore[operator]
        with pytest.raises(CheckpointError) as err:
            resume(copy)
        assert Path(rel).name.split(".")[0].lstrip("_") in str(err.value) or "manifest" in str(err.value), rel
    return files


def test_every_file_of_a_sharded_fsdp_checkpoint_is_verified(tmp_path: Path) -> None:
    run = tmp_path / "fsdp"
    train(RegressionTask(), Regression(), fsdp_cfg(run, batch_size=8, fsdp=True, steps=2))

    def resume(folder: Path) -> None:
        cfg = fsdp_cfg(folder, batch_size=8, fsdp=True, steps=3, resume=True, resume_fallback=False)
        train(RegressionTask(), Regression(), cfg)

    files = _check_every_file(run, tmp_path, resume)
    assert any(f.startswith("sharded/") and f.endswith(".distcp") for f in files)
    assert "sharded/.metadata" in files


def test_every_file_of_a_gan_vae_checkpoint_is_verified(tmp_path: Path) -> None:
    run = tmp_path / "vae"
    tcfg = VAETaskConfig(gan_weight=0.5, gan_start=1, disc_channels=8, disc_layers=2, eval_images=0)

    def cfg(folder: Path, **kw) -> TrainerConfig:
        base = dict(out_dir=str(folder), steps=2, batch_size=4, lr=1e-3, ckpt_every=2, log_every=1, progress=False)
        return TrainerConfig(**{**base, **kw})

    train(VAETask(_vae(), tcfg), Blobs(n=8), cfg(run))

    def resume(folder: Path) -> None:
        train(VAETask(_vae(), tcfg), Blobs(n=8), cfg(folder, steps=3, resume=True, resume_fallback=False))

    files = _check_every_file(run, tmp_path, resume)
    assert any("disc" in f and f.endswith(".safetensors") for f in files), files  # the discriminator's weights
    assert any("optimizer_disc" in f for f in files), files  # and its optimizer
