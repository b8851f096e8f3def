"""Translation of the parsed official config into :class:`flexitok.config.FlexTokConfig`."""

from __future__ import annotations

import math
from typing import Any

from flexitok.config import DecoderConfig, EncoderConfig, FlexTokConfig, TransformerConfig, VAEConfig
from flexitok.errors import CheckpointError
from flexitok.io.official.metadata import _check_targets, _find, _modules, _role
from flexitok.io.official.options import check_options, class_name, option
from flexitok.io.official.wiring import _ROLES, check_wiring
from flexitok.nn.precision import PRECISIONS


def _norm_eps(node: dict[str, Any], where: str, allow_none: bool) -> float | None:
    """The eps of a ``norm_layer`` option that is the affine-free LayerNorm (None: no norm, heads only)."""
    norm = option(node, "norm_layer")
    if norm == "Fp32LayerNorm":  # absent: the official default
        return 1e-5
    if norm is None and allow_none:
        return None
    if isinstance(norm, dict) and _role(norm) == "norm":
        check_options(norm, f"{where}.norm_layer")
        if option(norm, "elementwise_affine") is False:
            return float(option(norm, "eps"))
    raise CheckpointError(
        f"official {where} norm_layer={norm!r} is not supported: the affine-free Fp32LayerNorm"
        + (" or None" if allow_none else "")
        + " only; other norms, or LayerNorm affine weights, are a different architecture that no FlexTok model uses"
    )


def _head_norm(node: dict[str, Any], where: str, trunk_eps: float) -> bool:
    eps = _norm_eps(node, where, allow_none=True)
    if eps is not None and eps != trunk_eps:
        raise CheckpointError(f"official {where} norm eps {eps} differs from its trunk's {trunk_eps}; not supported")
    return eps is not None


def _check_trunk(node: dict[str, Any], where: str) -> float:
    """Refuse trunk variants flexitok does not implement; return the trunk's LayerNorm eps."""
    eps = _norm_eps(node, f"{where} transformer", allow_none=False)
    act = option(node, "act_layer")
    if act != "SiLU" and not (isinstance(act, dict) and _role(act) == "act"):
        raise CheckpointError(f"official {where} transformer act_layer={act!r} is not supported: SiLU only")
    if isinstance(act, dict):
        check_options(act, f"{where}.act_layer")
    assert eps is not None
    return eps


def _transformer(node: dict[str, Any], eps: float) -> TransformerConfig:
    return TransformerConfig(
        norm_eps=eps,
        dim=int(option(node, "dim")),
        depth=int(option(node, "depth")),
        head_dim=int(option(node, "head_dim")),
        mlp_ratio=float(option(node, "mlp_ratio")),
        qk_norm=bool(option(node, "qk_norm")),
        attn_scale_base=8.0,
    )


def _posemb(node: dict[str, Any], where: str, dims: int) -> tuple[tuple[int, ...], str, str]:
    """(table size, posemb_type, posemb_scaling) of an official position-embedding node."""
    sizes = tuple(int(x) for x in option(node, "max_sizes"))
    kind, scaling = option(node, "posemb_type"), option(node, "posemb_scaling")
    if len(sizes) != dims:
        raise CheckpointError(f"official {where} position table must be {dims}-D here, got max_sizes={list(sizes)}")
    if kind not in ("sincos", "learnable_sum", "learnable_prod"):
        raise CheckpointError(f"official {where} posemb_type {kind!r} is not supported")
    if kind == "sincos" and dims != 2:
        raise CheckpointError(f"official {where}: a 1-D sincos table fails in the official code (2-D only)")
    if scaling not in ("absolute", "interpolate"):
        raise CheckpointError(f"official {where} posemb_scaling {scaling!r} is not supported")
    if scaling == "interpolate" and dims != 2:
        raise CheckpointError(
            f"official {where}: posemb_scaling='interpolate' on a 1-D table fails in the official code "
            "(bilinear interpolation needs 2-D)"
        )
    if kind != "sincos" and len(set(sizes)) != 1:
        raise CheckpointError(f"official {where}: a learned table needs equal max_sizes, got {list(sizes)}")
    return sizes, kind, scaling


def _precision(value: Any, where: str) -> Any:
    if value is None or value in PRECISIONS:
        return value
    raise CheckpointError(f"official {where} dtype_override={value!r} is not a dtype ({sorted(PRECISIONS)})")


def _mup_base(head: dict[str, Any], where: str, base: int | None) -> int | None:
    if not option(head, "use_mup_readout"):
        return None
    if base is None:
        raise CheckpointError(
            f"the official {where} head uses a muP readout (use_mup_readout=True): it divides its input by the "
            "width multiplier dim / base_width, and the base width is not stored in the checkpoint (the official "
            "code needs mup.set_base_shapes from the training script); pass mup_base_width=<base model width>"
        )
    return int(base)


def _mup_bases(mup_base_width: int | tuple[int, int] | None) -> tuple[int | None, int | None]:
    if isinstance(mup_base_width, tuple | list):
        return int(mup_base_width[0]), int(mup_base_width[1])
    return mup_base_width, mup_base_width


def config_from_official(
    cfg: dict[str, Any],
    vae_config: dict[str, Any] | None = None,
    image_size: tuple[int, int] | None = None,
    mup_base_width: int | tuple[int, int] | None = None,
) -> FlexTokConfig:
    """Translate the parsed official config into a :class:`FlexTokConfig`.

    Options absent from the config take the official constructor defaults (:mod:`flexitok.io.official.options`).
    Official checkpoints do not store an image size: any size whose patch grid fits the position table works per
    call. The native size (the default for ``detokenize``) is the largest the table covers (table size x patch
    size x VAE downsampling) unless ``image_size`` is given. ``mup_base_width`` (one value, or (encoder, decoder))
    is needed only for heads with ``use_mup_readout=True``.
    """
    _check_targets(cfg)
    for key in ("vae", "encoder", "decoder", "regularizer", "pipeline"):
        if not isinstance(cfg.get(key), dict):
            raise CheckpointError(f"official config has no {key!r} section")
    for key, node in cfg.items():
        if isinstance(node, dict) and "_target_" in node:
            check_options(node, key)
    enc_mods, dec_mods = _modules(cfg["encoder"]), _modules(cfg["decoder"])
    for mods, where in ((enc_mods, "encoder"), (dec_mods, "decoder")):
        for name, m in mods.items():
            check_options(m, f"{where}.{name}")
            if m["_target_"].endswith("PerSampleOp"):
                check_options(m["per_sample_op"], f"{where}.{name}.per_sample_op")
            if _role(m) not in _ROLES[where]:
                raise CheckpointError(
                    f"official {where} module {name!r} ({class_name(m['_target_'])}) has no place there"
                )
    check_options(cfg, "root")
    check_wiring(cfg)

    e_patch = _find(enc_mods, "patch_embed", "encoder")
    e_pos = _find(enc_mods, "posemb", "encoder")
    e_regs = _find(enc_mods, "registers", "encoder")
    e_tr = _find(enc_mods, "transformer", "encoder")
    e_head = _find(enc_mods, "enc_head", "encoder")
    e_pack = _find(enc_mods, "packer", "encoder")
    d_patch = _find(dec_mods, "patch_embed", "decoder")
    d_pos = _find(dec_mods, "posemb", "decoder", lambda m: len(option(m, "max_sizes")) == 2)
    d_regpos = _find(dec_mods, "posemb", "decoder", lambda m: len(option(m, "max_sizes")) == 1)
    d_tr = _find(dec_mods, "transformer", "decoder")
    d_null = _find(dec_mods, "null_cond", "decoder")
    d_time = _find(dec_mods, "time_embed", "decoder")
    d_drop = _find(dec_mods, "nested_dropout", "decoder")
    d_head = _find(dec_mods, "dec_head", "decoder")
    d_pack = _find(dec_mods, "packer", "decoder")
    d_codes = _find(dec_mods, "from_codes", "decoder")

    flat = bool(option(e_patch, "flatten_patches"))
    if option(d_patch, "flatten_patches"):
        raise CheckpointError(
            "official decoder PatchEmbedder has flatten_patches=True: the official ToPatchesLinearHead cannot "
            "un-patchify a flat patch sequence, so the official decoder fails; refused"
        )
    e_eps, d_eps = _check_trunk(e_tr, "encoder"), _check_trunk(d_tr, "decoder")
    if flat and option(e_pos, "posemb_type") == "sincos":
        raise CheckpointError(
            "official encoder has flatten_patches=True with a 2-D sincos table: the official forward adds a "
            "cropped [rows, cols] table to a flat sequence (it fails or broadcasts nonsense); refused"
        )
    e_grid, e_kind, e_scaling = _posemb(e_pos, "encoder", 1 if flat else 2)
    d_grid, d_kind, d_scaling = _posemb(d_pos, "decoder", 2)
    reg_len, reg_kind, _ = _posemb(d_regpos, "decoder register", 1)
    if reg_kind == "sincos":
        raise CheckpointError("official decoder register position table must be learned")

    n_regs = int(option(e_regs, "n_max"))
    n_eval = option(e_regs, "n_eval")
    if reg_len[0] < n_regs:
        raise CheckpointError(
            f"decoder register posemb covers {reg_len[0]} positions, encoder has {n_regs} (the official code fails)"
        )
    levels = tuple(int(x) for x in option(cfg["regularizer"], "levels"))
    if int(option(e_head, "dim_out")) != len(levels):
        raise CheckpointError(f"encoder head outputs {e_head['dim_out']} values but FSQ has {len(levels)} levels")
    adaln = int(option(d_tr, "adaLN_expansion"))
    if adaln not in (1, 2) or bool(option(d_pack, "per_subseq_embs")) != (adaln == 2):
        raise CheckpointError(
            f"official decoder adaLN_expansion={adaln} with per_subseq_embs={option(d_pack, 'per_subseq_embs')}: "
            "only 1 with False (shared) and 2 with True (patches / registers) run in the official code"
        )

    v = cfg["vae"]
    latent_c = int(option(v, "latent_channels"))
    for p, where in ((e_patch, "encoder"), (d_patch, "decoder")):
        if int(option(p, "channels_in")) != latent_c:
            raise CheckpointError(f"{where} patch embedder takes {p['channels_in']} channels, VAE has {latent_c}")
    d_ps = tuple(int(x) for x in option(d_patch, "patch_sizes"))
    if int(option(d_head, "channels_out")) != latent_c or tuple(option(d_head, "patch_sizes")) != d_ps:
        raise CheckpointError("official decoder head does not produce latent patches of the decoder's patch size")
    out_c = option(cfg["pipeline"], "out_channels")
    if out_c is not None and int(out_c) != latent_c:
        raise CheckpointError(f"official pipeline samples {out_c} channels, VAE has {latent_c}")
    vcfg = dict(vae_config) if vae_config else None
    downsample = 8
    if vcfg is not None:
        downsample = 2 ** (len(vcfg.get("block_out_channels", [0, 0, 0, 0])) - 1)
    scaling = option(v, "scaling_factor") or (vcfg or {}).get("scaling_factor") or 1.0
    vae = VAEConfig(
        kind="diffusers",
        latent_channels=latent_c,
        downsample=downsample,
        scaling_factor=float(scaling),
        sample_posterior=bool(option(v, "sample_posterior")),
        diffusers_config=vcfg,
        pretrained=option(v, "hf_hub_path"),
        dtype_override=_precision(option(v, "dtype_override"), "vae"),
    )
    e_ps = tuple(int(x) for x in option(e_patch, "patch_sizes"))
    if flat:  # a raster table: the native size is the largest square grid it covers
        side = math.isqrt(e_grid[0])
        largest = (side * e_ps[0] * downsample, side * e_ps[1] * downsample)
    else:
        largest = (e_grid[0] * e_ps[0] * downsample, e_grid[1] * e_ps[1] * downsample)
    if image_size is None:
        image_size = largest
    enc_base, dec_base = _mup_bases(mup_base_width)
    return FlexTokConfig(
        image_size=tuple(image_size),  # type: ignore[arg-type]
        vae=vae,
        encoder=EncoderConfig(
            transformer=_transformer(e_tr, e_eps),
            patch_size=e_ps,  # type: ignore[arg-type]
            n_registers=n_regs,
            posemb_grid=e_grid,
            head_bias=bool(option(e_head, "proj_bias")),
            posemb_type=e_kind,  # type: ignore[arg-type]
            posemb_scaling=e_scaling,  # type: ignore[arg-type]
            flatten_patches=flat,
            register_ordering=option(e_regs, "ordering_mode"),
            n_eval=None if n_eval is None or int(n_eval) == n_regs else int(n_eval),
            mask_mode=option(e_pack, "mask_mode"),
            mup_base_width=_mup_base(e_head, "encoder", enc_base),
            head_norm=_head_norm(e_head, "encoder head", e_eps),
            head_dtype=_precision(option(e_head, "dtype_override"), "encoder head"),
            patch_proj=option(e_patch, "dim") is not None,
        ),
        decoder=DecoderConfig(
            transformer=_transformer(d_tr, d_eps),
            patch_size=d_ps,  # type: ignore[arg-type]
            posemb_grid=d_grid,
            adaln_expansion=adaln,
            time_freq_dim=int(option(d_time, "frequency_embedding_size")),
            max_timestep=float(option(d_time, "max_timestep")),
            learned_null_cond=d_null["_target_"].endswith("LearnedNullCond"),
            posemb_type=d_kind,  # type: ignore[arg-type]
            posemb_scaling=d_scaling,  # type: ignore[arg-type]
            mask_mode=option(d_pack, "mask_mode"),
            mup_base_width=_mup_base(d_head, "decoder", dec_base),
            register_posemb_len=None if reg_len[0] == n_regs else reg_len[0],
            head_norm=_head_norm(d_head, "decoder head", d_eps),
            head_dtype=_precision(option(d_head, "dtype_override"), "decoder head"),
            head_bias=bool(option(d_head, "proj_bias")),
            head_adaln_bias=bool(option(d_head, "adaLN_bias")),
            from_codes_bias=bool(option(d_codes, "proj_bias")),
            from_codes_dtype=_precision(option(d_codes, "dtype_override"), "decoder code projection"),
            patch_proj=option(d_patch, "dim") is not None,
            mask_truncated=option(d_drop, "eval_keep_k_read_key") is not None,
            null_single_token=bool(
                d_null["_target_"].endswith("LearnedNullCond") and option(d_null, "replace_with_single_token")
            ),
        ),
        fsq_levels=levels,
    )
