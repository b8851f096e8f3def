"""`train vae` measures the latent scale the tokenizer needs (issue 20.7) and a tokenizer config can take it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flexitok.cli.main import main
from flexitok.data import DataConfig, build_dataset
from flexitok.errors import ConfigError
from flexitok.train.config import load_run_config
from flexitok.train.tokenizer import TokenizerTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def test_vae_export_writes_latent_std_and_the_tokenizer_reads_it(tmp_path: Path, capsys) -> None:
    from diffusers import AutoencoderKL

    out = tmp_path / "vae-run"
    argv = ["train", "vae", "--config", str(ROOT / "configs" / "vae-tiny-fmnist.yaml"), "train.steps=1"]
    argv += ["data.limit=40", "task.eval_latent_stats=24", "train.progress=false", "train.eval_every=0"]
    argv += ["model.block_out_channels=[8,8]", "model.norm_num_groups=4", "task.gan_weight=0", "train.batch_size=4"]
    assert main([*argv, f"train.out_dir={out}", "train.cpu_threads=1"]) == 0
    assert "scaling_factor" in capsys.readouterr().out
    stats = json.loads((out / "vae" / "latent_stats.json").read_text())
    assert stats["images"] == 24
    # independently: the exported VAE's posterior-mode latents of the same 24 training images
    vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    ds = build_dataset(DataConfig(kind="fashion_mnist", image_size=32, limit=40))
    images = torch.stack([ds[i]["image"] for i in range(24)])
    with torch.no_grad():
        z = vae.encode(images).latent_dist.mode().double()
    assert stats["latent_std"] == pytest.approx(float(z.std(unbiased=False)), rel=1e-5)
    assert stats["scaling_factor"] == pytest.approx(1 / stats["latent_std"])
    assert len(stats["channel_std"]) == z.shape[1]

    cfg = load_run_config(
        TokenizerTrainConfig,
        ROOT / "configs" / "photo-tokenizer.yaml",
        [f"model.vae.pretrained={out / 'vae'}", "model.vae.scaling_factor=auto"],
    )
    assert cfg.model.vae.scaling_factor == pytest.approx(stats["scaling_factor"])
    with pytest.raises(ConfigError, match="latent_stats.json"):
        load_run_config(
            TokenizerTrainConfig,
            ROOT / "configs" / "photo-tokenizer.yaml",
            [f"model.vae.pretrained={tmp_path}", "model.vae.scaling_factor=auto"],
        )
