"""Writing a :class:`flexitok.FlexTok` as an official-format checkpoint (header metadata + renamed weights)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from flexitok.config import FlexTokConfig, TransformerConfig
from flexitok.errors import CheckpointError
from flexitok.io.official.keys import _rename, official_key_map
from flexitok.io.official.metadata import _P, parse_metadata
from flexitok.models.vae import DiffusersVAE
from flexitok.utils.files import atomic_write, atomic_write_json
from flexitok.utils.weights import write_safetensors_streaming

if TYPE_CHECKING:
    from flexitok.models.flextok import FlexTok


def official_metadata(config: FlexTokConfig) -> dict[str, str]:
    """The official header metadata (Hydra config as Python-literal strings) describing ``config``.

    Only arguments of the official constructors are written (the official code passes each to its class):
    those that affect the forward computation, the read/write keys of the module graph, and fixed values for
    training-only options.
    """
    if config.vae.kind != "diffusers":
        raise CheckpointError("only models with a diffusers VAE can be exported to the official format")
    e, d, c = config.encoder, config.decoder, config.vae.latent_channels
    et, dt = e.transformer, d.transformer
    for x in (et, dt):
        if x.attn_scale_base != 8.0 or x.mlp_hidden is not None:
            raise CheckpointError("the official format needs attn_scale_base=8 and the default MLP width")

    def norm(eps: float) -> dict[str, Any]:
        # The default norm_layer is written out only when its eps differs from the official 1e-5.
        if eps == 1e-5:
            return {}
        layer = {"_target_": _P + "layers.norm.Fp32LayerNorm", "_partial_": True, "bias": False}
        return {"norm_layer": {**layer, "elementwise_affine": False, "eps": eps}}

    lat = config.latent_size
    e_grid = e.posemb_grid or (
        (lat[0] // e.patch_size[0] * lat[1] // e.patch_size[1],)
        if e.flatten_patches
        else (lat[0] // e.patch_size[0], lat[1] // e.patch_size[1])
    )
    d_grid = d.posemb_grid or (lat[0] // d.patch_size[0], lat[1] // d.patch_size[1])

    def t(name: str, **kw: Any) -> dict[str, Any]:
        return {"_target_": name, **kw}

    def tr(x: TransformerConfig, **kw: Any) -> dict[str, Any]:
        return t(_P + "trunks.transformers.FlexTransformer", dim=x.dim, depth=x.depth, head_dim=x.head_dim,
                 mlp_ratio=x.mlp_ratio, qk_norm=x.qk_norm, **norm(x.norm_eps), **kw)  # fmt: skip

    to_last = t(_P + "utils.dict_ops.channels_first_to_last", _partial_=True)
    encoder = t(_P + "utils.wrappers.SequentialModuleDictWrapper", module_dict={
        "enc_channels_to_last": t(_P + "utils.dict_ops.PerSampleOp", read_key="vae_latents", write_key="enc_vae_latents", per_sample_op=to_last),
        "enc_patch_emb": t(_P + "preprocessors.patching.PatchEmbedder", input_tensor_list_read_key="enc_vae_latents", patches_list_write_key="enc_vae_latents_patched", n_patches_write_key="enc_n_patches", patch_sizes=list(e.patch_size), channels_in=c, dim=et.dim if e.patch_proj else None, flatten_patches=e.flatten_patches),
        "enc_posemb_module": t(_P + "utils.posembs.PositionalEmbeddingAdder", read_key="enc_vae_latents_patched", write_key="enc_vae_latents_patched", dim=et.dim, max_sizes=list(e_grid), posemb_type=e.posemb_type, posemb_scaling=e.posemb_scaling),
        "enc_register_module": t(_P + "preprocessors.registers.Registers1D", input_tensor_list_read_key="enc_vae_latents_patched", register_sizes_read_write_key="register_sizes", registers_write_key="enc_registers", dim=et.dim, n_min=e.n_registers, n_max=e.n_registers, n_eval=e.n_eval, size_sampling_mode="uniform", ordering_mode=e.register_ordering),
        "enc_seq_packer": t(_P + "preprocessors.flex_seq_packing.BlockWiseSequencePacker", input_list_read_keys=["enc_vae_latents_patched", "enc_registers"], packed_seq_write_key="enc_packed_seq", block_mask_write_key="enc_block_mask", inner_packed_shapes_write_key="enc_ps_inner", outer_packed_shapes_write_key="enc_ps_outer", mask_mode=e.mask_mode, pad_to_multiple=128),
        "enc_transformer": tr(et, input_seq_read_key="enc_packed_seq", output_seq_write_key="enc_packed_seq", block_mask_read_key="enc_block_mask"),
        "enc_unpacker": t(_P + "postprocessors.seq_unpacking.SequenceUnpacker", packed_seq_read_key="enc_packed_seq", inner_seq_write_keys=["enc_vae_latents_patched", "enc_registers"], inner_packed_shapes_read_key="enc_ps_inner", outer_packed_shapes_read_key="enc_ps_outer"),
        "enc_to_latents": t(_P + "postprocessors.heads.LinearHead", read_key="enc_registers", write_key="enc_registers", dim=et.dim, dim_out=len(config.fsq_levels), use_mup_readout=e.mup_base_width is not None, weight_init_style="xavier", proj_bias=e.head_bias, dtype_override=e.head_dtype, **(norm(et.norm_eps) if e.head_norm else {"norm_layer": None})),
    })  # fmt: skip
    null_target = "LearnedNullCond" if d.learned_null_cond else "ZeroNullCond"
    null_dim = {"dim": dt.dim} if d.learned_null_cond else {}  # ZeroNullCond takes no dim
    if d.null_single_token and not d.learned_null_cond:
        raise CheckpointError("the official ZeroNullCond has no single-token mode (decoder.null_single_token)")
    single = {"replace_with_single_token": True} if d.null_single_token else {}
    decoder = t(_P + "utils.wrappers.SequentialModuleDictWrapper", module_dict={
        "dec_from_latents": t(_P + "preprocessors.linear.LinearLayer", read_key="enc_registers_quant", write_key="dec_quants", dim_in=len(config.fsq_levels), dim=dt.dim, proj_bias=d.from_codes_bias, dtype_override=d.from_codes_dtype),
        "dec_registers_posemb_module": t(_P + "utils.posembs.PositionalEmbeddingAdder", read_key="dec_quants", write_key="dec_quants", dim=dt.dim, max_sizes=[d.register_posemb_len or e.n_registers], posemb_type="learnable_sum", posemb_scaling="absolute"),
        "dec_nested_dropout": t(_P + "preprocessors.token_dropout.MaskedNestedDropout", read_write_key="dec_quants", dim=dt.dim, eval_keep_k_read_key="eval_keep_k" if d.mask_truncated else None, train_keep_k_write_key="train_keep_k", size_sampling_mode="uniform"),
        "dec_latent_dropout": t(_P + f"preprocessors.nullcond.{null_target}", read_write_key="dec_quants", **null_dim, eval_drop_flag_read_key="eval_dropout_mask", dropout_prob=0.2, **single),
        "dec_noise_channels_to_last": t(_P + "utils.dict_ops.PerSampleOp", read_key="vae_latents_noised", write_key="dec_noised_latents", per_sample_op=to_last),
        "dec_noise_patch_emb": t(_P + "preprocessors.patching.PatchEmbedder", input_tensor_list_read_key="dec_noised_latents", patches_list_write_key="dec_patches", n_patches_write_key="dec_n_patches", patch_sizes=list(d.patch_size), channels_in=c, dim=dt.dim if d.patch_proj else None, flatten_patches=False),
        "dec_patches_posemb_module": t(_P + "utils.posembs.PositionalEmbeddingAdder", read_key="dec_patches", write_key="dec_patches", dim=dt.dim, max_sizes=list(d_grid), posemb_type=d.posemb_type, posemb_scaling=d.posemb_scaling),
        "dec_seq_packer": t(_P + "preprocessors.flex_seq_packing.BlockWiseSequencePacker", input_list_read_keys=["dec_patches", "dec_quants"], packed_seq_write_key="dec_packed_seq", block_mask_write_key="dec_sa_block_mask", inner_packed_shapes_write_key="dec_ps_inner", outer_packed_shapes_write_key="dec_ps_outer", mask_mode=d.mask_mode, pad_to_multiple=128, emb_packing_fn_write_key="dec_emb_packing_fn", per_subseq_embs=d.adaln_expansion > 1),
        "dec_time_embedder": t(_P + "preprocessors.time_embedding.TimestepEmbedder", timesteps_read_key="timesteps", time_embedding_write_key="dec_temb", dim=dt.dim, frequency_embedding_size=d.time_freq_dim, max_timestep=d.max_timestep),
        "dec_transformer": tr(dt, input_seq_read_key="dec_packed_seq", output_seq_write_key="dec_packed_seq", block_mask_read_key="dec_sa_block_mask", adaLN_emb_read_key="dec_temb", adaLN_packing_fn_read_key="dec_emb_packing_fn", adaLN_expansion=d.adaln_expansion),
        "dec_unpacker": t(_P + "postprocessors.seq_unpacking.SequenceUnpacker", packed_seq_read_key="dec_packed_seq", inner_seq_write_keys=["dec_patches", "dec_quants"], inner_packed_shapes_read_key="dec_ps_inner", outer_packed_shapes_read_key="dec_ps_outer"),
        "dec_to_patches": t(_P + "postprocessors.heads.ToPatchesLinearHead", read_key="dec_patches", write_key="dec_pred_bhwc", dim=dt.dim, channels_out=c, patch_sizes=list(d.patch_size), use_mup_readout=d.mup_base_width is not None, weight_init_style="xavier", adaLN_emb_read_key="dec_temb", proj_bias=d.head_bias, adaLN_bias=d.head_adaln_bias, dtype_override=d.head_dtype, **(norm(dt.norm_eps) if d.head_norm else {"norm_layer": None})),
        "dec_channels_to_first": t(_P + "utils.dict_ops.PerSampleOp", read_key="dec_pred_bhwc", write_key="vae_latents_reconst", per_sample_op=t(_P + "utils.dict_ops.channels_last_to_first", _partial_=True)),
    })  # fmt: skip
    cfg = {
        "_target_": "flextok.flextok_wrapper.FlexTok",
        "vae": t(
            "flextok.vae_wrapper.StableDiffusionVAE",
            images_read_key="rgb",
            vae_latents_read_key="vae_latents_reconst",
            vae_latents_write_key="vae_latents",
            images_reconst_write_key="rgb_reconst",
            vae_kl_loss_write_key="kl_loss",
            latent_channels=c,
            scaling_factor=config.vae.scaling_factor,
            hf_hub_path=config.vae.pretrained or "./vae",
            sample_posterior=config.vae.sample_posterior,
            dtype_override=config.vae.dtype_override or "fp32",
            frozen=True,
        ),  # fmt: skip
        "encoder": encoder,
        "regularizer": t(
            "flextok.regularizers.quantize_fsq.FSQ",
            latents_read_key="enc_registers",
            quants_write_key="enc_registers_quant",
            tokens_write_key="tokens",
            levels=list(config.fsq_levels),
        ),  # fmt: skip
        "decoder": decoder,
        "flow_matching_noise_module": t(
            "flextok.flow_matching.noise_modules.MinRFNoiseModule",
            clean_images_read_key="vae_latents",
            noised_images_write_key="vae_latents_noised",
            timesteps_write_key="timesteps",
            sigmas_write_key="sigmas",
        ),  # fmt: skip
        "pipeline": t(
            "flextok.flow_matching.pipelines.MinRFPipeline",
            _partial_=True,
            target_sizes_read_key=None,
            latents_read_key="enc_registers_quant",
            timesteps_read_key="timesteps",
            noised_images_read_key="vae_latents_noised",
            reconst_write_key="vae_latents_reconst",
            out_channels=c,
        ),  # fmt: skip
    }
    return {k: (v if isinstance(v, str) else str(v)) for k, v in cfg.items()}


def official_state_dict(model: FlexTok) -> tuple[dict[str, str], dict[str, Tensor]]:
    """-> (the official header metadata, ``model``'s tensors under their official names). The tensors are the
    model's own (views, no copies), so this works on a model built on the meta device too."""
    meta = official_metadata(model.config)
    ours_to_official = [(dst, src) for src, dst in official_key_map(parse_metadata(meta))]
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        new = _rename(key, ours_to_official)
        if new is None:
            raise CheckpointError(f"flexitok weight {key!r} has no official counterpart")
        if key == "decoder.register_posemb":
            value = value.t().reshape(1, 1, value.shape[1], value.shape[0])
        out[new] = value
    return meta, out


def export_official(model: FlexTok, directory: str | Path) -> Path:
    """Write ``model`` as an official-format checkpoint: ``model.safetensors`` (+ ``vae/config.json``).

    The weights are streamed out one tensor at a time (no copy of the model is built)."""
    directory = Path(directory)
    meta, out = official_state_dict(model)
    atomic_write(directory / "model.safetensors", lambda p: write_safetensors_streaming(p, out, meta))
    assert isinstance(model.vae, DiffusersVAE)  # official_metadata refused other VAEs
    atomic_write_json(directory / "vae" / "config.json", dict(model.vae.vae.config))
    return directory
