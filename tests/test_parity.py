"""Exact reproduction of the official implementation on the official-tiny fixture."""

from __future__ import annotations

import json

import pytest
import torch

from flexitok import DecodeConfig, FlexTok
from flexitok.io.official import infer_vae_config, parse_metadata
from flexitok.nn.embeddings import sincos_2d_table

TOL = 1e-4


@pytest.fixture(scope="module")
def model(official_dir) -> FlexTok:
    return FlexTok.from_official(official_dir / "model.safetensors")


def test_config_is_read_from_metadata(model):
    c = model.config
    assert c.image_size == (64, 64) and c.latent_size == (8, 8)
    assert c.n_registers == 32 and c.fsq_levels == (8, 8, 8, 5, 5, 5) and model.vocab_size == 64000
    assert c.encoder.transformer.dim == 64 and c.encoder.transformer.num_heads == 2
    assert c.decoder.adaln_expansion == 2


def test_tokens_identical(model, cases):
    assert torch.equal(model.tokenize(cases["images"]), cases["tokens"])


def test_intermediates_match(model, cases):
    with torch.no_grad():
        assert (model.vae.encode(cases["images"]) - cases["vae_latents"]).abs().max() < TOL
        assert (model.vae.decode(cases["vae_latents"]) - cases["vae_decoded"]).abs().max() < TOL
        z = model.encoder(cases["vae_latents"])
        assert (z - cases["enc_latents"]).abs().max() < TOL
        codes, ids = model.fsq(cases["enc_latents"])
        assert torch.equal(codes, cases["quants"]) and torch.equal(ids, cases["tokens"])


@pytest.mark.parametrize("name", ["a", "b", "c"])
def test_every_sampler_step_matches(model, cases, name):
    keep = cases[f"{name}.keep_k"]
    cond = model.decoder.condition(model.fsq.ids_to_codes(cases["tokens"]), keep)
    with torch.no_grad():
        for i, t in enumerate(cases[f"{name}.t"]):
            x = cases[f"{name}.x_t"][i]
            v = model.decoder(x, t.expand(2), cond)
            assert (v - cases[f"{name}.v_cond"][i]).abs().max() < TOL
            if f"{name}.v_uncond" in cases:
                vu = model.decoder(x, t.expand(2), model.decoder.null_condition(2))
                assert (vu - cases[f"{name}.v_uncond"][i]).abs().max() < TOL


@pytest.mark.parametrize("name", ["a", "b", "c"])
def test_detokenize_matches(model, cases, cases_meta, name):
    case = next(c for c in cases_meta["cases"] if c["name"] == name)
    keep = cases[f"{name}.keep_k"]
    token_list = [cases["tokens"][i, : keep[i]] for i in range(2)]
    decode = DecodeConfig(
        steps=case["timesteps"], guidance_scale=case["guidance_scale"], apg=case["perform_norm_guidance"]
    )
    images, latents = model.detokenize_with_latents(token_list, decode, noise=cases[f"{name}.noise"])
    assert (latents - cases[f"{name}.latents"]).abs().max() < TOL
    assert (images - cases[f"{name}.images"]).abs().max() < TOL
    # The official pipeline draws one randn per image from the generator: the same seed gives the same noise.
    g = torch.Generator().manual_seed(case["noise_seed"])
    images_g = model.detokenize(token_list, decode, generator=g)
    assert (images_g - cases[f"{name}.images"]).abs().max() < TOL


def test_padded_tensor_input_equals_list_input(model, cases):
    noise = cases["b.noise"]
    keep = cases["b.keep_k"]
    lst = model.detokenize([cases["tokens"][i, : keep[i]] for i in range(2)], DecodeConfig(steps=2), noise=noise)
    ten = model.detokenize(cases["tokens"], DecodeConfig(steps=2), keep_k=keep, noise=noise)
    assert torch.allclose(lst, ten, atol=1e-6)


def test_stored_sincos_tables_match_formula(official_dir):
    from safetensors.torch import load_file

    sd = load_file(str(official_dir / "model.safetensors"))
    table = sd["encoder.module_dict.enc_posemb_module.posembs"]
    assert torch.allclose(table, sincos_2d_table(64, 4, 4), atol=1e-6)


def test_vae_architecture_inferred_from_weights(official_dir):
    from safetensors.torch import load_file

    sd = load_file(str(official_dir / "model.safetensors"))
    ref = json.loads((official_dir / "vae" / "config.json").read_text())
    inferred = infer_vae_config(sd, norm_num_groups=ref["norm_num_groups"])
    for key, value in inferred.items():
        assert ref[key] == value, key


def test_loading_without_vae_folder_uses_weights(official_dir, tmp_path, cases):
    import shutil

    shutil.copy(official_dir / "model.safetensors", tmp_path / "model.safetensors")
    # Without vae/ beside it the architecture is inferred; only the GroupNorm group count must be supplied.
    model = FlexTok.from_official(tmp_path / "model.safetensors", vae_config={"norm_num_groups": 8})
    assert model.vae.vae.config.norm_num_groups == 8
    assert torch.equal(model.tokenize(cases["images"]), cases["tokens"])
    with pytest.warns(UserWarning, match="guessing norm_num_groups"):
        guessed = FlexTok.from_official(tmp_path / "model.safetensors")
    assert guessed.vae.vae.config.norm_num_groups == 16  # gcd(32, 16, 32, 32, 32): loads, but is a guess


def test_metadata_parsing_keeps_bare_strings():
    parsed = parse_metadata({"_target_": "flextok.flextok_wrapper.FlexTok", "x": "{'a': True, 'b': None}"})
    assert parsed == {"_target_": "flextok.flextok_wrapper.FlexTok", "x": {"a": True, "b": None}}
