"""The VAE architecture read off diffusers AutoencoderKL weights alone (no config.json at hand)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors import safe_open
from safetensors.torch import save_file

from flexitok import FlexTok
from flexitok.errors import CheckpointError
from flexitok.io.official import export_official, infer_vae_config, read_safetensors_header
from tests.conftest import tiny_vae_config

# Widths cycled over the matrix: 2, 3 and 2 blocks, norm groups the gcd rule recovers (gcd(32, widths)).
WIDTHS = [(8, 16), (16, 16, 32), (32, 32)]
MATRIX = [
    (layers, attn, quant, WIDTHS[i % len(WIDTHS)])
    for i, (layers, attn, quant) in enumerate(itertools.product([1, 2, 3], [True, False], [True, False]))
]


def _vae_config(layers: int, attn: bool, quant: bool, widths: tuple[int, ...]) -> dict:
    n = len(widths)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(widths),
        "layers_per_block": layers,
        "latent_channels": 4,
        "norm_num_groups": math.gcd(32, *widths),  # what the weights-only rule assumes
        "mid_block_add_attention": attn,
        "use_quant_conv": quant,
        "use_post_quant_conv": quant,
    }


def _randomized(cfg: dict, seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(**cfg).eval()
    with torch.no_grad():  # zero GroupNorm biases would hide a mis-wired norm
        for p in vae.parameters():
            if not p.abs().any():
                p.normal_(0, 0.1)
    return vae


@pytest.mark.parametrize(("layers", "attn", "quant", "widths"), MATRIX, ids=lambda v: str(v))
@pytest.mark.parametrize("prefix", ["", "vae.vae."], ids=["diffusers", "official"])
def test_infer_vae_config_rebuilds_the_architecture(layers, attn, quant, widths, prefix, tmp_path, one_thread):
    cfg = _vae_config(layers, attn, quant, widths)
    vae = _randomized(cfg, seed=layers * 10 + attn * 2 + quant)
    path = tmp_path / "weights.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))  # no config

    with safe_open(str(path), framework="pt") as f:
        weights = {k[len(prefix) :]: f.get_tensor(k) for k in f.keys()}
    shapes, _ = read_safetensors_header(path)  # meta tensors: the shapes are enough
    inferred = infer_vae_config(shapes)
    for key in ("block_out_channels", "layers_per_block", "mid_block_add_attention", "use_quant_conv"):
        assert inferred[key] == cfg[key], key
    assert inferred["use_post_quant_conv"] == quant
    assert inferred["latent_channels"] == 4 and inferred["in_channels"] == inferred["out_channels"] == 3

    rebuilt = AutoencoderKL(**inferred).eval()
    rebuilt.load_state_dict(weights, strict=True)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(x).sample, vae(x).sample)


def test_sdxl_style_vae_loads_without_its_config(tmp_path, one_thread):
    """The issue's case: an official checkpoint whose VAE has 2 resnets per block, loaded with no vae/ folder."""
    from flexitok.config import tiny_config

    cfg = tiny_config()
    vcfg = {**tiny_vae_config(latent_channels=cfg.vae.latent_channels, blocks=2), "layers_per_block": 2}
    cfg.vae.kind, cfg.vae.diffusers_config, cfg.vae.downsample = "diffusers", vcfg, 2
    torch.manual_seed(0)
    model = FlexTok(cfg).eval()
    export_official(model, tmp_path)
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["layers_per_block"] == 2
    (tmp_path / "vae" / "config.json").unlink()

    loaded = FlexTok.from_official(tmp_path / "model.safetensors", vae_config={"norm_num_groups": 4})
    assert loaded.vae.vae.config.layers_per_block == 2
    images = torch.rand(1, 3, *cfg.image_size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.tokenize(images), model.tokenize(images))


def test_non_vae_weights_are_refused():
    with pytest.raises(CheckpointError, match="no VAE weights"):
        infer_vae_config({"encoder.trunk.blocks.0.weight": torch.zeros(2)})
