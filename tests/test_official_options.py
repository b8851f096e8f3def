"""Official-format import for option combinations beyond the fixture (export -> import must be exact)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from flexitok import DecodeConfig, FlexTok
from flexitok.config import DecoderConfig, EncoderConfig, FlexTokConfig, TransformerConfig, VAEConfig
from flexitok.errors import CheckpointError, InvalidInputError
from flexitok.io.official import export_official, load_official, official_metadata, parse_metadata
from flexitok.io.official.options import OFFICIAL_OPTIONS, check_options, class_name
from flexitok.utils.weights import read_safetensors, save_safetensors
from tests.conftest import bilinear_align_corners, tiny_vae_config

COMBOS = {
    "adaln-shared-patch1": dict(adaln=1, enc_patch=(1, 1), dec_patch=(1, 1), regs=8, levels=(8, 5, 5, 5), head=16),
    "adaln-split-wide-posemb": dict(adaln=2, enc_patch=(2, 2), dec_patch=(2, 2), regs=12, levels=(7, 5, 5), grid=(6, 6)),
    "mixed-patches-zero-null": dict(adaln=2, enc_patch=(2, 2), dec_patch=(1, 1), regs=5, levels=(8, 8, 8, 5, 5, 5), null=False),
    "rect-image-deep": dict(adaln=2, enc_patch=(2, 1), dec_patch=(2, 2), regs=4, levels=(4, 4), image=(16, 8), depth=3),
    # The four options that used to be refused, each with official semantics:
    "posemb-interpolate": dict(adaln=2, enc_patch=(2, 2), dec_patch=(2, 2), regs=6, levels=(8, 5, 5), grid=(5, 3),
                               enc=dict(posemb_scaling="interpolate"), dec=dict(posemb_scaling="interpolate")),
    "mup-readout": dict(adaln=2, enc_patch=(2, 2), dec_patch=(2, 2), regs=6, levels=(8, 5, 5),
                        enc=dict(mup_base_width=8), dec=dict(mup_base_width=16), mup=(8, 16)),
    "flatten-patches": dict(adaln=2, enc_patch=(2, 2), dec_patch=(2, 2), regs=6, levels=(8, 5, 5),
                            enc=dict(flatten_patches=True, posemb_type="learnable_sum", posemb_grid=(9,))),
    "avg-pool-n-eval": dict(adaln=2, enc_patch=(2, 2), dec_patch=(2, 2), regs=10, levels=(8, 5, 5),
                            enc=dict(register_ordering="avg_pool", n_eval=7)),
    # Other official options: learned 2-D tables, other mask modes, a longer register table, no head bias.
    "learned-posemb-masks": dict(adaln=1, enc_patch=(2, 2), dec_patch=(1, 1), regs=6, levels=(8, 5, 5), grid=(4, 4), eps=1e-6,
                                 enc=dict(posemb_type="learnable_prod", mask_mode="causal", head_bias=False),
                                 dec=dict(posemb_type="learnable_sum", mask_mode="causal_last", register_posemb_len=9)),
    # Head / projection variants: no patch projection (dim=None), no norms, no biases, precision overrides,
    # no mask tokens at inference (eval_keep_k_read_key=None), a one-token null condition.
    "head-variants": dict(adaln=2, enc_patch=(2, 4), dec_patch=(2, 2), regs=6, levels=(8, 5, 5),
                          enc=dict(patch_proj=False, head_norm=False, head_dtype="bf16"),
                          dec=dict(head_bias=False, head_adaln_bias=False, from_codes_bias=False, head_norm=False,
                                   from_codes_dtype="bf16", head_dtype="fp32", mask_truncated=False,
                                   null_single_token=True)),
}  # fmt: skip


def make_config(o: dict) -> FlexTokConfig:
    vcfg = tiny_vae_config(latent_channels=4, blocks=2)
    tr = dict(dim=32, depth=o.get("depth", 1), head_dim=o.get("head", 16), norm_eps=o.get("eps", 1e-5))
    enc = {"posemb_grid": o.get("grid"), **o.get("enc", {})}
    dec = {"posemb_grid": o.get("grid"), **o.get("dec", {})}
    return FlexTokConfig(
        image_size=o.get("image", (8, 8)),
        vae=VAEConfig(kind="diffusers", latent_channels=4, downsample=2, diffusers_config=vcfg, scaling_factor=0.7),
        encoder=EncoderConfig(TransformerConfig(**tr), patch_size=o["enc_patch"], n_registers=o["regs"], **enc),
        decoder=DecoderConfig(TransformerConfig(**tr), patch_size=o["dec_patch"], adaln_expansion=o["adaln"],
                              learned_null_cond=o.get("null", True), **dec),
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
    loaded = load_official(
        tmp_path / "model.safetensors", image_size=model.image_size, mup_base_width=COMBOS[name].get("mup")
    ).eval()
    for part in ("encoder", "decoder"):
        ours, theirs = getattr(model.config, part), getattr(loaded.config, part)
        assert ours.transformer == theirs.transformer and ours.patch_size == theirs.patch_size
        for key, value in COMBOS[name].get(part[:3], {}).items():
            assert getattr(theirs, key) == value, key
    assert loaded.config.fsq_levels == model.config.fsq_levels
    assert loaded.config.decoder.adaln_expansion == model.config.decoder.adaln_expansion
    images = torch.rand(3, 3, *model.image_size) * 2 - 1
    tokens = model.tokenize(images)
    assert tokens.shape == (3, model.config.encoder.n_tokens)
    assert torch.equal(tokens, loaded.tokenize(images))
    noise = torch.randn(3, 4, *model.config.latent_size)
    n = tokens.shape[1]
    keep = [1, n // 2, n]
    a = model.detokenize(tokens, DecodeConfig(steps=3, guidance_scale=3.0), keep_k=keep, noise=noise)
    b = loaded.detokenize(tokens, DecodeConfig(steps=3, guidance_scale=3.0), keep_k=keep, noise=noise)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "name, written",
    [
        ("posemb-interpolate", "'posemb_scaling': 'interpolate'"),
        ("mup-readout", "'use_mup_readout': True"),
        ("flatten-patches", "'flatten_patches': True"),
        ("avg-pool-n-eval", "'ordering_mode': 'avg_pool'"),
    ],
)
def test_official_metadata_carries_the_option(name, written):
    meta = official_metadata(make_config(COMBOS[name]))
    assert written in meta["encoder"]
    # Only arguments of the official constructors (the official code passes each one to its class).
    nodes = list(_nodes(parse_metadata(meta)))
    assert len(nodes) > 30
    for node in nodes:
        assert set(node) - {"_target_", "_partial_"} <= set(OFFICIAL_OPTIONS[class_name(node["_target_"])])
        check_options(node, "exported")


def _nodes(node):
    """Every config node with a _target_."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield node
        for v in node.values():
            yield from _nodes(v)


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


REFUSED = [
    ("regularizer", "quantize_fsq.FSQ", "quantize_vq.VQ", "unsupported official component"),
    ("encoder", "'posemb_scaling': 'absolute'", "'posemb_scaling': 'bicubic'", "posemb_scaling='bicubic' is not supported"),
    # interpolate on the 1-D register table: bilinear interpolation fails in the official code.
    ("decoder", "'posemb_scaling': 'absolute'", "'posemb_scaling': 'interpolate'", "1-D table fails"),
    ("decoder", "'flatten_patches': False", "'flatten_patches': True", "cannot un-patchify"),
    ("encoder", "'flatten_patches': False", "'flatten_patches': True", "flatten_patches=True with a 2-D sincos"),
    # flatten_patches absent: the official default is True, which with a sin-cos table cannot run.
    ("encoder", ", 'flatten_patches': False", "", "flatten_patches=True with a 2-D sincos"),
    ("encoder", "'use_mup_readout': False", "'use_mup_readout': True", "pass mup_base_width"),
    ("encoder", "'ordering_mode': 'nested'", "'ordering_mode': 'random'", "ordering_mode='random' is not supported"),
    ("encoder", "'mask_mode': 'causal_last'", "'mask_mode': 'prefix'", "mask_mode='prefix' is not supported"),
    ("encoder", "'head_dim': 32", "'head_dim': 32, 'use_bias': False", "unknown option 'use_bias'"),
    ("encoder", "'head_dim': 32", "'head_dim': 32, 'qkv_bias': True", "qkv_bias=True is not supported"),
    ("encoder", "['enc_vae_latents_patched', 'enc_registers']", "['enc_registers', 'enc_vae_latents_patched']",
     "packer input 'enc_registers' holds registers, expected position-embedded patches"),
    ("decoder", "'eval_drop_flag_read_key': 'eval_dropout_mask'", "'eval_drop_flag_read_key': 'drop'", "no-op"),
    ("decoder", "'per_subseq_embs': True", "'per_subseq_embs': False", "per_subseq_embs"),
    ("encoder", "'head_dim': 32", "'head_dim': 32, 'act_layer': {'_target_': 'torch.nn.GELU', '_partial_': True}",
     "unsupported official component 'torch.nn.GELU'"),
    ("encoder", "'head_dim': 32", "'head_dim': 32, 'norm_layer': {'_target_': "
     "'flextok.model.layers.norm.Fp32LayerNorm', '_partial_': True, 'bias': False}", "norm_layer=.* not supported"),
    ("encoder", "'head_dim': 32", "'head_dim': 32, 'score_mod_read_key': 'mod'", "KeyError"),
    ("decoder", "'max_timestep': 1.0", "'max_timestep': 1.0, 'temb_as_tokens': True", "temb_as_tokens"),
]  # fmt: skip


@pytest.mark.parametrize("section, old, new, match", REFUSED, ids=[r[-1][:30] for r in REFUSED])
def test_unsupported_config_is_refused(tmp_path, official_dir, section, old, new, match):
    tensors, meta = read_safetensors(official_dir / "model.safetensors")
    meta = dict(meta)
    assert old in meta[section]
    meta[section] = meta[section].replace(old, new, 1)
    save_safetensors(tensors, tmp_path / "model.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match=match):
        load_official(tmp_path / "model.safetensors", vae_config=official_dir / "vae")


ACCEPTED = [
    # Explicit defaults and training-only options change nothing at inference.
    ("encoder", "'head_dim': 32", "'head_dim': 32, 'act_layer': {'_target_': 'torch.nn.SiLU', '_partial_': True}, "
     "'norm_layer': {'_target_': 'flextok.model.layers.norm.Fp32LayerNorm', '_partial_': True, 'bias': False, "
     "'elementwise_affine': False}, 'drop_path_rate': 0.1, 'use_act_checkpoint': True, 'intermediate_layers': [1]"),
    ("encoder", "'pad_to_multiple': 128", "'pad_to_multiple': 256, 'compile_block_mask': False"),
    ("encoder", "'size_sampling_mode': 'uniform'", "'size_sampling_mode': 'powers_of_two', 'n_eval': 32"),
    ("vae", "'frozen': True", "'frozen': True, 'learnable_logvar': True, 'compile_encode_fn': True"),
    ("regularizer", "'levels'", "'drop_quant_p': 0.5, 'corrupt_tokens_p': 0.1, 'levels'"),
]  # fmt: skip


@pytest.mark.parametrize("section, old, new", ACCEPTED, ids=[r[0] + str(i) for i, r in enumerate(ACCEPTED)])
def test_inference_neutral_options_are_accepted(tmp_path, official_dir, cases, section, old, new):
    tensors, meta = read_safetensors(official_dir / "model.safetensors")
    meta = dict(meta)
    assert old in meta[section]
    meta[section] = meta[section].replace(old, new, 1)
    # Tensors such options add to official checkpoints are dropped: the loss log-variance, fused VAE q/k/v.
    tensors["vae.logvar"] = torch.zeros(())
    tensors["vae.vae.encoder.mid_block.attentions.0.to_qkv.weight"] = torch.zeros(96, 32)
    save_safetensors(tensors, tmp_path / "model.safetensors", metadata=meta)
    model = load_official(tmp_path / "model.safetensors", vae_config=official_dir / "vae")
    assert torch.equal(model.tokenize(cases["images"]), cases["tokens"])


def test_absent_options_take_official_defaults(tmp_path, official_dir, cases):
    """An option missing from the config means the official constructor default, not a flexitok one."""
    tensors, meta = read_safetensors(official_dir / "model.safetensors")
    meta = dict(meta)
    meta["vae"] = meta["vae"].replace("'sample_posterior': False, ", "")
    meta["decoder"] = meta["decoder"].replace(", 'max_timestep': 1.0", "")
    save_safetensors(tensors, tmp_path / "model.safetensors", metadata=meta)
    model = load_official(tmp_path / "model.safetensors", vae_config=official_dir / "vae")
    assert model.config.vae.sample_posterior is True  # StableDiffusionVAE(sample_posterior=True)
    assert model.config.decoder.max_timestep == 1000.0  # TimestepEmbedder(max_timestep=1000.0)
    assert torch.equal(model.tokenize(cases["images"], deterministic=True), cases["tokens"])


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


# ---------------------------------------------------------------------------------------------------------------
# The four formerly refused options against their formulas, computed independently in float64 numpy.


def _model(name: str, seed: int = 3) -> FlexTok:
    torch.manual_seed(seed)
    model = FlexTok(make_config(COMBOS[name])).eval()
    randomize(model, seed)
    return model


def _patches(latents: torch.Tensor, p: int) -> np.ndarray:
    """``[B, C, H, W]`` -> ``[B, H/p, W/p, p*p*C]`` flattened in (row-in-patch, col-in-patch, channel) order."""
    x = latents.double().numpy()
    b, c, h, w = x.shape
    out = np.zeros((b, h // p, w // p, p * p * c))
    for r in range(h // p):
        for q in range(w // p):
            block = x[:, :, r * p : (r + 1) * p, q * p : (q + 1) * p]  # [B, C, p, p]
            out[:, r, q] = block.transpose(0, 2, 3, 1).reshape(b, -1)
    return out


def _linear(x: np.ndarray, layer: torch.nn.Linear) -> np.ndarray:
    return x @ layer.weight.double().detach().numpy().T + layer.bias.double().detach().numpy()


@pytest.mark.parametrize("grid", [(2, 2), (3, 4), (1, 3)])
def test_posemb_interpolate_matches_bilinear_formula(grid):
    """posemb_scaling='interpolate': the whole table is resized to every grid (also smaller ones)."""
    model = _model("posemb-interpolate")
    enc = model.encoder
    assert enc.posemb.sizes == (5, 3)
    latents = torch.randn(2, 4, 2 * grid[0], 2 * grid[1])
    table = enc.posemb.table[0].double().numpy()
    expected = _linear(_patches(latents, 2), enc.patch_embed.proj) + bilinear_align_corners(table, grid).transpose(
        1, 2, 0
    )
    got = enc.embed_patches(latents).double().detach().numpy()
    assert np.abs(got - expected.reshape(2, -1, 32)).max() < 1e-5
    if grid == (2, 2):  # not the top-left crop of the absolute mode
        assert np.abs(bilinear_align_corners(table, grid) - table[:, :2, :2]).max() > 1e-2


def test_mup_readout_matches_formula():
    """use_mup_readout: mup's MuReadout computes Linear(x / width_mult), width_mult = dim / base_width."""
    model = _model("mup-readout")
    x = torch.randn(2, 5, 32)
    ln = torch.nn.functional.layer_norm(x.double(), (32,), eps=1e-5).numpy()
    enc_head = model.encoder.head
    assert enc_head.width_mult == 32 / 8
    expected = _linear(ln / (32 / 8), enc_head.proj)
    assert np.abs(enc_head(x).double().detach().numpy() - expected).max() < 1e-5

    dec_head, c = model.decoder.head, torch.randn(2, 32)
    mod = _linear(torch.nn.functional.silu(c.double()).numpy(), dec_head.adaLN_modulation[1])
    shift, scale = mod[:, None, :32], mod[:, None, 32:]
    expected = _linear((ln * (1 + scale) + shift) / (32 / 16), dec_head.proj)
    assert np.abs(dec_head(x, c).double().detach().numpy() - expected).max() < 1e-5


def test_mup_readout_needs_the_base_width(tmp_path):
    export_official(_model("mup-readout"), tmp_path)
    with pytest.raises(CheckpointError, match="base width is not stored in the checkpoint"):
        load_official(tmp_path / "model.safetensors")


def test_flatten_patches_matches_formula():
    """flatten_patches=True: patches are one raster-order sequence; the 1-D table adds row i to patch i."""
    model = _model("flatten-patches")
    enc = model.encoder
    latents = torch.randn(2, 4, 4, 6)  # a 2x3 patch grid: 6 of the table's 9 positions
    table = enc.posemb.table[0, 0].double().detach().numpy()  # [D, 9]
    expected = _linear(_patches(latents, 2).reshape(2, 6, -1), enc.patch_embed.proj) + table[:, :6].T
    assert np.abs(enc.embed_patches(latents).double().detach().numpy() - expected).max() < 1e-5
    with pytest.raises(InvalidInputError, match="1-D position table has 9"):
        model.check_image_size((16, 16))  # 4x4 = 16 patches
    model.check_image_size((8, 16))  # 2x4 = 8 patches fit


def test_avg_pool_ordering_matches_formula():
    """ordering_mode='avg_pool': n registers are the learned ones average-pooled (adaptive bins) to n."""
    model = _model("avg-pool-n-eval")
    regs = model.encoder.registers.double().detach().numpy()  # [10, D]
    n_max, n = 10, 7
    expected = np.stack([regs[(i * n_max) // n : -((-(i + 1) * n_max) // n)].mean(0) for i in range(n)])
    got = model.encoder.register_tokens(n).double().detach().numpy()
    assert np.abs(got - expected).max() < 1e-6
    assert torch.equal(model.encoder.register_tokens(n_max), model.encoder.registers)  # pooling n -> n: identity


def test_avg_pool_at_full_count_equals_nested():
    """With n_eval = n_max (the official default) avg_pool only matters in training: tokens are identical."""
    cfg = make_config(COMBOS["avg-pool-n-eval"])
    pooled = FlexTok(dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, n_eval=None))).eval()
    nested = FlexTok(
        dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, n_eval=None, register_ordering="nested"))
    ).eval()
    randomize(pooled, 5)
    nested.load_state_dict(pooled.state_dict())
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    assert torch.equal(pooled.tokenize(images), nested.tokenize(images))


def test_sample_posterior_follows_the_checkpoint_unless_deterministic(official_dir, cases):
    """tokenize() samples the VAE posterior exactly when the checkpoint says so (official semantics);
    deterministic=True always encodes the posterior mean."""
    model = FlexTok.from_official(official_dir / "model.safetensors")
    images, vae_cfg = cases["images"], model.config.vae

    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    assert vae_cfg.sample_posterior is False  # the fixture sets it
    assert torch.equal(model.tokenize(images, generator=gen(1)), cases["tokens"])
    sampled = model.tokenize(images, deterministic=False, generator=gen(1))
    assert not torch.equal(sampled, cases["tokens"])
    vae_cfg.sample_posterior = True  # as in a checkpoint that omits it (StableDiffusionVAE default)
    try:
        assert torch.equal(model.tokenize(images, generator=gen(1)), sampled)
        assert not torch.equal(model.tokenize(images, generator=gen(2)), sampled)
        assert torch.equal(model.tokenize(images, deterministic=True), cases["tokens"])
        # A sample is mean + std * N(0, 1) drawn from the generator, times the scaling factor.
        post = model.vae.vae.encode(images).latent_dist
        eps = torch.randn(post.mean.shape, generator=gen(3))
        z = model.vae.encode(images, generator=gen(3))
        assert torch.allclose(z, (post.mean + post.std * eps) * vae_cfg.scaling_factor, atol=1e-5)
    finally:
        vae_cfg.sample_posterior = False


def test_docs_list_every_official_option():
    """docs/official-checkpoints.md embeds the generated option table and refusal list verbatim."""
    from pathlib import Path

    from flexitok.io.official.options import options_markdown, refused_markdown

    doc = (Path(__file__).resolve().parent.parent / "docs" / "official-checkpoints.md").read_text()
    assert "<!-- options:begin -->\n" + options_markdown() + "<!-- options:end -->" in doc
    assert "<!-- refused:begin -->\n" + refused_markdown() + "<!-- refused:end -->" in doc
    rows = [line for line in options_markdown().splitlines()[2:]]
    assert len(rows) == sum(max(1, len(t)) for t in OFFICIAL_OPTIONS.values()) > 150
    for row in rows:
        status = row.split("|")[-2].strip()
        assert status.startswith(("supported", "accepted (training only)")), row
