"""Paper-size presets through the official format: export -> import is bit-identical (slow tier)."""

from __future__ import annotations

import gc

import pytest
import torch
from safetensors import safe_open

from flexitok import DecodeConfig, FlexTok, preset
from flexitok.io.official import export_official, load_official, parse_metadata
from flexitok.io.official.options import check_options
from tests.conftest import tiny_vae_config

# bfloat16 keeps the largest preset (2.46B parameters) at about 5 GB; the format and the key map do not depend on
# the dtype (float32 round trips are covered by tests/test_official_options.py).
DTYPE = torch.bfloat16


def _build(name: str) -> FlexTok:
    cfg = preset(name)
    cfg.vae.diffusers_config = tiny_vae_config(latent_channels=16, blocks=4)  # f8 like the paper's VAE, tiny
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    try:
        model = FlexTok(cfg).to(DTYPE).eval()
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():  # adaLN-zero and zero heads would make the decode step trivially equal
        for p in model.parameters():
            if not p.abs().any():
                p.normal_(0, 0.02)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["d12-d12", "d18-d18", "d18-d28"])
def test_paper_preset_official_round_trip_is_bit_identical(name, tmp_path):
    model = _build(name)
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    images = (torch.rand(1, 3, *cfg.image_size, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(DTYPE)
    noise = model.initial_noise(1, torch.Generator().manual_seed(2))
    tokens = model.tokenize(images)
    # One decode step with guidance: the conditional and the null-condition passes of the decoder.
    decode = dict(noise=noise, keep_k=[100])
    images_a, latents_a = model.detokenize_with_latents(
        tokens, DecodeConfig(steps=1, guidance_scale=7.5, apg=True), **decode
    )
    export_official(model, tmp_path)
    del model
    gc.collect()

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        meta = parse_metadata(f.metadata())
    enc_tr = meta["encoder"]["module_dict"]["enc_transformer"]
    assert (enc_tr["dim"], enc_tr["depth"]) == (cfg.encoder.transformer.dim, cfg.encoder.transformer.depth)
    check_options(enc_tr, "encoder transformer")

    loaded = load_official(tmp_path / "model.safetensors", dtype=DTYPE).eval()
    assert loaded.config.image_size == cfg.image_size == (256, 256)
    assert loaded.config.encoder.transformer == cfg.encoder.transformer
    assert loaded.config.decoder.transformer == cfg.decoder.transformer
    assert sum(p.numel() for p in loaded.parameters()) == n_params
    assert torch.equal(loaded.tokenize(images), tokens)
    images_b, latents_b = loaded.detokenize_with_latents(
        tokens, DecodeConfig(steps=1, guidance_scale=7.5, apg=True), **decode
    )
    assert torch.equal(latents_b, latents_a) and torch.equal(images_b, images_a)
