"""VAE task: losses decrease, the discriminator is checkpointed through the task hooks, export is diffusers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flexitok.errors import InvalidInputError
from flexitok.train.checkpointing.files import load_checkpoint
from flexitok.train.trainer import TrainerConfig, train
from flexitok.train.vae import PatchDiscriminator, VAEModelConfig, VAETask, VAETaskConfig, build_autoencoder

pytestmark = pytest.mark.usefixtures("one_thread")


class Blobs(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, size: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        centers = torch.rand(n, 2, generator=g) * 1.2 - 0.6
        colors = torch.rand(n, 3, generator=g) * 2 - 1
        d = (xx[None] - centers[:, 0, None, None]) ** 2 + (yy[None] - centers[:, 1, None, None]) ** 2
        blob = (d < 0.15).float()
        self.images = (colors[:, :, None, None] * blob[:, None] - 0.5 * (1 - blob[:, None])).clamp(-1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": -1}


def _vae():
    torch.manual_seed(0)
    return build_autoencoder(VAEModelConfig(latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4))


def test_vae_reconstruction_loss_decreases_and_exports(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    data = Blobs()
    task = VAETask(_vae(), VAETaskConfig(kl_weight=1e-6, eval_images=4), eval_dataset=data)
    cfg = TrainerConfig(
        out_dir=str(tmp_path),
        steps=60,
        batch_size=8,
        lr=2e-3,
        weight_decay=0.0,
        log_every=5,
        ckpt_every=60,
        eval_every=60,
        progress=False,
    )
    train(task, data, cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rec = [r["rec"] for r in rows if "rec" in r]
    assert rec[-1] < 0.6 * rec[0], rec
    assert (tmp_path / "eval" / "vae_recon_step00000060.png").is_file()
    loaded = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert loaded.config.latent_channels == 4 and len(loaded.config.block_out_channels) == 2
    sd = task.model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in loaded.state_dict().items())


def test_gan_discriminator_steps_and_is_checkpointed(tmp_path: Path) -> None:
    data = Blobs(n=8)
    tcfg = VAETaskConfig(
        gan_weight=0.5, gan_start=1, disc_channels=8, disc_layers=2, perceptual_weight=0.1, eval_images=0
    )
    task = VAETask(_vae(), tcfg)
    before = {k: v.clone() for k, v in task.disc.state_dict().items()}
    cfg = TrainerConfig(
        out_dir=str(tmp_path), steps=3, batch_size=4, lr=1e-3, log_every=1, ckpt_every=3, progress=False
    )
    last = train(task, data, cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "d_loss" not in rows[0] and "d_loss" in rows[1] and "perceptual" in rows[0]  # warm-up respected
    after = task.disc.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    saved = load_checkpoint(last)
    assert all(torch.equal(saved.tensors["disc"][k], after[k]) for k in after)
    assert saved.objects["optimizer_disc"]["state"]  # the discriminator's own optimizer has state


def test_patch_discriminator_shapes() -> None:
    d = PatchDiscriminator(channels=8, layers=3)
    assert d(torch.randn(2, 3, 32, 32)).shape == (2, 1, 4, 4)


def test_bad_vae_channels_is_a_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="norm_num_groups"):
        build_autoencoder(VAEModelConfig(block_out_channels=(10, 16), norm_num_groups=4))


def test_discriminator_steps_once_per_update_with_grad_accum(tmp_path: Path) -> None:
    data = Blobs(n=16)
    tcfg = VAETaskConfig(gan_weight=0.5, gan_start=1, disc_channels=8, disc_layers=2, eval_images=0)
    task = VAETask(_vae(), tcfg)
    disc_steps: list[int] = []
    task.disc_opt.register_step_post_hook(lambda opt, args, kwargs: disc_steps.append(len(disc_calls)))
    disc_calls: list[int] = []
    loss_fn = task.discriminator_loss

    def counting_loss(batch, step):
        disc_calls.append(step)
        return loss_fn(batch, step)

    task.discriminator_loss = counting_loss  # the trainer reads extra_optimizers() after this
    cfg = TrainerConfig(
        out_dir=str(tmp_path), steps=3, batch_size=2, grad_accum=4, lr=1e-3, log_every=1, ckpt_every=3, progress=False
    )
    train(task, data, cfg)
    # Update 0 is before gan_start: the loss is asked (and declines) per micro-batch, no step. Updates 1 and 2:
    # four micro-batch losses accumulated, then exactly one discriminator step each.
    assert disc_calls == [0] * 4 + [1] * 4 + [2] * 4
    assert disc_steps == [8, 12]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "d_loss" not in rows[0] and "d_loss" in rows[1] and "g_adv" in rows[2]
