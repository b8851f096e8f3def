"""Loading a diffusers VAE folder prints nothing about the optional ``accelerate`` package (issue 20.8)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flexitok.models.vae import load_autoencoder_kl


def test_vae_folder_loads_without_the_accelerate_notice(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
    )
    vae.save_pretrained(tmp_path / "vae")
    capfd.readouterr()
    loaded = load_autoencoder_kl(str(tmp_path / "vae"))
    out = capfd.readouterr()
    assert "accelerate" not in out.err + out.out  # diffusers' own handler writes to stderr
    for (k, a), b in zip(vae.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
