"""Official-format import for option combinations beyond the fixture (export -> import must be exact)."""

from __future__ import annotations

import pytest
import torch

from flexitok import FlexTok
from flexitok.config import DecoderConfig, EncoderConfig, FlexTokConfig, TransformerConfig, VAEConfig
from flexitok.errors import CheckpointError
from flexitok.io.checkpoint import read_safetensors, save_safetensors
from flexitok.io.official import export_official, load_official, parse_metadata
from tests.conftest import tiny_vae_config

COMBOS = {
    "adaln-shared-patch1": dict(adaln=1, enc_patch=(1, 1), dec_patch=(1, 1), regs=8, levels=(8, 5, 5, 5), head=16),
    "adaln-split-wide-posemb": dict(adaln=2, enc_patch=(2, 2), dec_patch=(2, 2), regs=12, levels=(7, 5, 5), grid=(6, 6)),
    "mixed-patches-zero-null": dict(adaln=2, enc_patch=(2, 2), dec_patch=(1, 1), regs=5, levels=(8, 8, 8, 5, 5, 5), null=False),
    "rect-image-deep": dict(adaln=2, enc_patch=(2, 1), dec_patch=(2, 2), regs=4, levels=(4, 4), image=(16, 8), depth=3),
}  # fmt: skip


def make_config(o: dict) -> FlexTokConfig:
    vcfg = tiny_vae_config(latent_channels=4, blocks=2)
    tr = dict(dim=32, depth=o.get("depth", 1), head_dim=o.get("head", 16))
    return FlexTokConfig(
        image_size=o.get("image", (8, 8)),
        vae=VAEConfig(kind="diffusers", latent_channels=4, downsample=2, diffusers_config=vcfg, scaling_factor=0.7),
        encoder=EncoderConfig(TransformerConfig(**tr), patch_size=o["enc_patch"], n_registers=o["regs"], posemb_grid=o.get("grid")),
        decoder=DecoderConfig(TransformerConfig(**tr), patch_size=o["dec_patch"], adaln_expansion=o["adaln"],
                              posemb_grid=o.get("grid"), learned_null_cond=o.get("null", True)),
        fsq_levels=o["levels"],
    )  # fmt: skip


def randomize(model: torch.nn.Module, seed: int) -> None:
    # Non-zero everything (adaLN-zero init would hide errors in the modulation layout).
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("vae."):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("name", sorted(COMBOS))
def test_export_import_roundtrip_is_exact(name, tmp_path):
    torch.manual_seed(0)
    model = FlexTok(make_config(COMBOS[name])).eval()
    randomize(model, 1)
    export_official(model, tmp_path)
    loaded = load_official(tmp_path / "model.safetensors", image_size=model.image_size).eval()
    for part in ("encoder", "decoder"):
        ours, theirs = getattr(model.config, part), getattr(loaded.config, part)
        assert ours.transformer == theirs.transformer and ours.patch_size == theirs.patch_size
    assert loaded.config.fsq_levels == model.config.fsq_levels
    assert loaded.config.decoder.adaln_expansion == model.config.decoder.adaln_expansion
    images = torch.rand(3, 3, *model.image_size) * 2 - 1
    assert torch.equal(model.tokenize(images), loaded.tokenize(images))
    tokens = model.tokenize(images)
    noise = torch.randn(3, 4, *model.config.latent_size)
    keep = [1, model.n_registers // 2, model.n_registers]
    a = model.detokenize(tokens, keep_k=keep, noise=noise, steps=3, guidance_scale=3.0)
    b = loaded.detokenize(tokens, keep_k=keep, noise=noise, steps=3, guidance_scale=3.0)
    assert torch.equal(a, b)


def test_adaln_expansion_modulates_groups_separately():
    o = COMBOS["adaln-split-wide-posemb"]
    model = FlexTok(make_config(o)).eval()
    randomize(model, 2)
    blk = model.decoder.trunk.blocks[0]
    c = torch.randn(2, 32)
    x = torch.randn(2, 9 + 12, 32)
    mods = blk._per_token(c, x.shape[1], split=9)
    assert all(m.shape == (2, 21, 32) for m in mods)
    # Patches use the first 6*D chunk, registers the second: they differ.
    assert not torch.allclose(mods[0][:, 0], mods[0][:, -1])


@pytest.mark.parametrize(
    "section, old, new, match",
    [
        ("regularizer", "quantize_fsq.FSQ", "quantize_vq.VQ", "unsupported official component"),
        ("encoder", "'posemb_scaling': 'absolute'", "'posemb_scaling': 'interpolate'", "posemb_scaling"),
        ("encoder", "'ordering_mode': 'nested'", "'ordering_mode': 'avg_pool'", "ordering_mode"),
    ],
)
def test_unsupported_config_is_refused(tmp_path, official_dir, section, old, new, match):
    tensors, meta = read_safetensors(official_dir / "model.safetensors")
    meta = dict(meta)
    assert old in meta[section]
    meta[section] = meta[section].replace(old, new, 1)
    save_safetensors(tensors, tmp_path / "model.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match=match):
        load_official(tmp_path / "model.safetensors", vae_config=official_dir / "vae")


def test_missing_key_is_reported(tmp_path, official_dir):
    tensors, meta = read_safetensors(official_dir / "model.safetensors")
    tensors.pop("decoder.module_dict.dec_latent_dropout.nullcond")
    save_safetensors(tensors, tmp_path / "model.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match="missing keys.*null_cond"):
        load_official(tmp_path / "model.safetensors", vae_config=official_dir / "vae")


def test_truncated_file_is_reported(tmp_path, official_dir):
    data = (official_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_official(tmp_path / "model.safetensors")


def test_hub_style_config_json(tmp_path, official_dir, cases):
    """PyTorchModelHubMixin repos keep the Hydra config in config.json and no header metadata."""
    import json
    import shutil

    tensors, meta = read_safetensors(official_dir / "model.safetensors")
    save_safetensors(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in parse_metadata(meta).items()}))
    shutil.copytree(official_dir / "vae", tmp_path / "vae")
    model = FlexTok.from_pretrained(tmp_path)
    assert torch.equal(model.tokenize(cases["images"]), cases["tokens"])


def test_hub_repo_id_resolution_uses_snapshot_download(tmp_path, official_dir, cases, monkeypatch):
    """A short name maps to its official repo id and loads what huggingface_hub downloads (here: a local copy)."""
    import shutil

    import huggingface_hub

    shutil.copy(official_dir / "model.safetensors", tmp_path / "model.safetensors")
    shutil.copytree(official_dir / "vae", tmp_path / "vae")
    asked = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        asked.append(repo_id)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = FlexTok.from_pretrained("d18-d28-dfn")
    assert asked == ["EPFL-VILAB/flextok_d18_d28_dfn"]
    assert torch.equal(model.tokenize(cases["images"]), cases["tokens"])


def test_hub_errors_are_clear(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="cannot download 'EPFL-VILAB/flextok_d12_d12_in1k'"):
        FlexTok.from_pretrained("EPFL-VILAB/flextok_d12_d12_in1k")
