"""Public FlexTok API: shapes, batching, validation, persistence."""

from __future__ import annotations

import pytest
import torch

from flexitok import CheckpointError, DecodeConfig, FlexTok, InvalidInputError, preset, tiny_config
from flexitok.utils.weights import read_safetensors, save_safetensors


@pytest.fixture(scope="module")
def model() -> FlexTok:
    torch.manual_seed(0)
    m = FlexTok(tiny_config(image_size=16, n_registers=8, dim=32, depth=1)).eval()
    with torch.no_grad():  # non-zero decoder so outputs depend on the tokens
        for n, p in m.decoder.named_parameters():
            if "adaLN" in n or "head" in n:
                p.normal_(0, 0.2)
    return m


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 3, 16, 16) * 2 - 1


def test_tokenize_shape_and_range(model, images):
    ids = model.tokenize(images)
    assert ids.shape == (3, 8) and ids.dtype == torch.long
    assert ids.min() >= 0 and ids.max() < model.vocab_size


def test_detokenize_any_prefix_and_batched_k(model, images):
    ids = model.tokenize(images)
    noise = torch.randn(3, 3, 16, 16)
    batched = model.detokenize([ids[0, :1], ids[1, :4], ids[2]], DecodeConfig(steps=3), noise=noise)
    assert batched.shape == (3, 3, 16, 16)
    for i, k in enumerate([1, 4, 8]):
        single = model.detokenize(ids[i : i + 1, :k], DecodeConfig(steps=3), noise=noise[i : i + 1])
        assert torch.allclose(batched[i], single[0], atol=1e-5)


def test_tokens_beyond_keep_k_are_ignored(model, images):
    ids = model.tokenize(images)
    other = ids.clone()
    other[:, 2:] = (other[:, 2:] + 1) % model.vocab_size
    noise = torch.randn(3, 3, 16, 16)
    a = model.detokenize(ids, DecodeConfig(steps=2), keep_k=2, noise=noise)
    b = model.detokenize(other, DecodeConfig(steps=2), keep_k=2, noise=noise)
    c = model.detokenize(other, DecodeConfig(steps=2), keep_k=3, noise=noise)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_batched_cfg_equals_separate_passes(model, images):
    from flexitok.sampling.flow import sample_flow

    ids = model.tokenize(images)
    cond = model.decoder.condition(model.fsq.ids_to_codes(ids), torch.full((3,), 8))
    null = model.decoder.null_condition(3)
    noise = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        fused = sample_flow(model.decoder, noise, cond, null, DecodeConfig(steps=2, guidance_scale=3.0, apg=False))
        x = noise
        for t in (1.0, 0.5):
            tt = torch.full((3,), t)
            vc, vu = model.decoder(x, tt, cond), model.decoder(x, tt, null)
            x = x - 0.5 * (vu + 3.0 * (vc - vu))
    assert torch.allclose(fused, x, atol=1e-5)


def test_guidance_scale_schedule(model, images):
    ids = model.tokenize(images)
    noise = torch.randn(3, 3, 16, 16)
    const = model.detokenize(ids, DecodeConfig(steps=2, guidance_scale=2.0, apg=False), noise=noise)
    sched = model.detokenize(ids, DecodeConfig(steps=2, guidance_scale=lambda t: 2.0, apg=False), noise=noise)
    varying = model.detokenize(ids, DecodeConfig(steps=2, guidance_scale=lambda t: 1.0 + 4 * t, apg=False), noise=noise)
    assert torch.equal(const, sched) and not torch.allclose(const, varying)


@pytest.mark.parametrize(
    "bad, msg",
    [
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "float"),
        (torch.zeros(2, 1, 16, 16), r"\[B, 3, H, W\]"),
        (torch.zeros(3, 16, 16), r"\[B, 3, H, W\]"),
        (torch.zeros(2, 3, 18, 16), "18x16 .*multiples of 4"),
        (torch.full((1, 3, 16, 16), 3.0), r"\[-1, 1\]"),
        (torch.full((1, 3, 16, 16), float("nan")), "NaN"),
    ],
)
def test_tokenize_rejects_bad_images(model, bad, msg):
    with pytest.raises(InvalidInputError, match=msg):
        model.tokenize(bad)


def test_detokenize_rejects_bad_tokens(model):
    with pytest.raises(InvalidInputError, match="lie in"):
        model.detokenize(torch.tensor([[model.vocab_size]]), DecodeConfig(steps=1))
    with pytest.raises(InvalidInputError, match="1..8"):
        model.detokenize(torch.zeros(1, 9, dtype=torch.long), DecodeConfig(steps=1))
    with pytest.raises(InvalidInputError, match="integer"):
        model.detokenize(torch.zeros(1, 4), DecodeConfig(steps=1))
    with pytest.raises(InvalidInputError, match="keep_k"):
        model.detokenize(torch.zeros(2, 4, dtype=torch.long), DecodeConfig(steps=1), keep_k=[1, 5])
    with pytest.raises(InvalidInputError, match="noise"):
        model.detokenize(torch.zeros(1, 4, dtype=torch.long), DecodeConfig(steps=1), noise=torch.zeros(1, 3, 8, 8))


def test_save_and_load_roundtrip(model, images, tmp_path):
    model.save_pretrained(tmp_path / "m")
    loaded = FlexTok.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    assert torch.equal(loaded.tokenize(images), model.tokenize(images))
    assert not list((tmp_path / "m").glob("*.tmp")), "atomic writes leave no temp files"


def test_mismatched_and_truncated_checkpoints(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    tensors, meta = read_safetensors(tmp_path / "m" / "model.safetensors")
    tensors["encoder.registers"] = tensors["encoder.registers"][:4]
    save_safetensors(tensors, tmp_path / "m" / "model.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match="shape mismatches.*encoder.registers"):
        FlexTok.from_pretrained(tmp_path / "m")
    data = (tmp_path / "m" / "model.safetensors").read_bytes()
    (tmp_path / "m" / "model.safetensors").write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        FlexTok.from_pretrained(tmp_path / "m")


def test_unknown_name_gives_clear_error():
    with pytest.raises(CheckpointError, match="not a bundled model"):
        FlexTok.from_pretrained("no-such-model")


def test_presets_have_paper_sizes():
    for name, (de, dd) in {"d12-d12": (12, 12), "d18-d18": (18, 18), "d18-d28": (18, 28)}.items():
        c = preset(name)
        assert (c.encoder.transformer.depth, c.decoder.transformer.depth) == (de, dd)
        assert c.encoder.transformer.dim == 64 * de and c.decoder.transformer.dim == 64 * dd
        assert c.n_registers == 256 and c.vocab_size == 64000 and c.latent_size == (32, 32)


def test_decoder_features_for_repa(model):
    x = torch.randn(2, 3, 16, 16)
    cond = model.decoder.null_condition(2)
    v, feats = model.decoder(x, torch.rand(2), cond, return_features_at=0)
    assert v.shape == x.shape and feats.shape == (2, 16, 32)
