"""Import of official (apple/ml-flextok) checkpoints.

The official ``model.safetensors`` stores the full state dict and, in its header metadata, the Hydra config:
one entry per top-level key whose value is the Python ``str()`` of a dict. We parse it with
``ast.literal_eval`` (never ``eval``, never Hydra ``instantiate``), check every ``_target_`` against an
allow-list, translate the options we understand into :class:`FlexTokConfig`, and refuse anything else with a
clear error. State-dict keys are renamed with an explicit table (:func:`official_key_map`).
"""

from __future__ import annotations

import ast
import json
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from flexitok.config import DecoderConfig, EncoderConfig, FlexTokConfig, TransformerConfig, VAEConfig
from flexitok.errors import CheckpointError
from flexitok.io.official_options import check_options, class_name, option
from flexitok.models.vae import DiffusersVAE, sd_style_vae_config
from flexitok.nn.precision import PRECISIONS
from flexitok.utils.weights import state_dict_problems

if TYPE_CHECKING:
    from flexitok.models.flextok import FlexTok

_P = "flextok.model."
# Every class/function the official config may name, by role. Anything else is refused.
KNOWN_TARGETS: dict[str, str] = {
    "flextok.flextok_wrapper.FlexTok": "root",
    "flextok.flextok_wrapper.FlexTokFromHub": "root",
    "flextok.vae_wrapper.StableDiffusionVAE": "vae",
    _P + "utils.wrappers.SequentialModuleDictWrapper": "sequential",
    _P + "utils.dict_ops.PerSampleOp": "layout",
    _P + "utils.dict_ops.channels_first_to_last": "layout",
    _P + "utils.dict_ops.channels_last_to_first": "layout",
    _P + "preprocessors.patching.PatchEmbedder": "patch_embed",
    _P + "utils.posembs.PositionalEmbeddingAdder": "posemb",
    _P + "preprocessors.registers.Registers1D": "registers",
    _P + "preprocessors.flex_seq_packing.BlockWiseSequencePacker": "packer",
    _P + "trunks.transformers.FlexTransformer": "transformer",
    _P + "postprocessors.seq_unpacking.SequenceUnpacker": "unpacker",
    _P + "postprocessors.heads.LinearHead": "enc_head",
    _P + "postprocessors.heads.ToPatchesLinearHead": "dec_head",
    "flextok.regularizers.quantize_fsq.FSQ": "fsq",
    _P + "preprocessors.linear.LinearLayer": "from_codes",
    _P + "preprocessors.token_dropout.MaskedNestedDropout": "nested_dropout",
    _P + "preprocessors.nullcond.LearnedNullCond": "null_cond",
    _P + "preprocessors.nullcond.ZeroNullCond": "null_cond",
    _P + "preprocessors.time_embedding.TimestepEmbedder": "time_embed",
    "flextok.flow_matching.noise_modules.MinRFNoiseModule": "noise",
    "flextok.flow_matching.pipelines.MinRFPipeline": "pipeline",
    _P + "layers.norm.Fp32LayerNorm": "norm",
    "torch.nn.SiLU": "act",
    "torch.nn.modules.activation.SiLU": "act",
}


def parse_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """Header metadata (str -> str) -> nested config; values that are not Python literals stay strings."""
    out: dict[str, Any] = {}
    for key, raw in meta.items():
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def _check_targets(node: Any, path: str = "") -> None:
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and target not in KNOWN_TARGETS:
            raise CheckpointError(
                f"unsupported official component {target!r} at {path or '<root>'}; flexitok knows: "
                + ", ".join(sorted(t.rsplit(".", 1)[-1] for t in KNOWN_TARGETS))
            )
        for k, v in node.items():
            _check_targets(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_targets(v, f"{path}[{i}]")


def _role(node: dict[str, Any]) -> str:
    return KNOWN_TARGETS[node["_target_"]]


def _modules(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: m for n, m in section.get("module_dict", {}).items() if isinstance(m, dict) and "_target_" in m}


def _find(modules: dict[str, Any], role: str, where: str, pred: Callable[[dict], bool] = lambda m: True) -> dict:
    hits = [m for m in modules.values() if _role(m) == role and pred(m)]
    if len(hits) != 1:
        raise CheckpointError(f"expected exactly one {role} module in the official {where}, found {len(hits)}")
    return hits[0]


_ROLES = {
    "encoder": {"layout", "patch_embed", "posemb", "registers", "packer", "transformer", "unpacker", "enc_head"},
    "decoder": {
        "from_codes", "posemb", "nested_dropout", "null_cond", "layout", "patch_embed", "packer", "time_embed",
        "transformer", "unpacker", "dec_head",
    },
}  # fmt: skip


class _Flow:
    """Data-dict simulation for :func:`check_wiring`: which value (a tag) each key holds at this point."""

    def __init__(self, where: str, keys: dict[str, str]) -> None:
        self.where, self.keys = where, dict(keys)

    def read(self, node: dict[str, Any], opt: str, *tags: str) -> None:
        key = option(node, opt)
        if self.keys.get(key) not in tags:
            got = self.keys.get(key, "nothing")
            raise CheckpointError(
                f"official {self.where} {class_name(node['_target_'])}.{opt}={key!r} reads {got}, expected "
                f"{' or '.join(tags)}: the module graph is not wired like FlexTok"
            )

    def write(self, node: dict[str, Any], opt: str, tag: str) -> None:
        key = option(node, opt)
        if key is not None:
            self.keys[key] = tag


def check_wiring(cfg: dict[str, Any]) -> None:
    """Follow the data-dict keys through the official module graph (in module order) and check that every
    module reads what FlexTok's graph feeds it: e.g. the encoder packer packs the position-embedded patches and
    the registers, the decoder's null condition overwrites the masked register condition, and the pipeline's
    keys meet the decoder's. Any other wiring is refused."""
    vae, reg, pipe = cfg["vae"], cfg["regularizer"], cfg["pipeline"]
    enc = _Flow("encoder", {option(vae, "vae_latents_write_key"): "the VAE latents"})
    for m in _modules(cfg["encoder"]).values():
        role = _role(m)
        if role == "layout":
            enc.read(m, "read_key", "the VAE latents")
            enc.write(m, "write_key", "channels-last latents")
        elif role == "patch_embed":
            enc.read(m, "input_tensor_list_read_key", "channels-last latents")
            enc.write(m, "patches_list_write_key", "patch tokens")
        elif role == "posemb":
            enc.read(m, "read_key", "patch tokens")
            enc.write(m, "write_key", "position-embedded patches")
        elif role == "registers":
            enc.read(m, "input_tensor_list_read_key", "patch tokens", "position-embedded patches")
            enc.write(m, "registers_write_key", "registers")
        elif role == "packer":
            _packed(enc, m, ["position-embedded patches", "registers"])
        elif role == "transformer":
            _trunk(enc, m, adaln=False)
        elif role == "unpacker":
            _unpack(enc, m, ["patch outputs", "register outputs"])
        elif role == "enc_head":
            enc.read(m, "read_key", "register outputs")
            enc.write(m, "write_key", "encoder outputs")
    enc.read(reg, "latents_read_key", "encoder outputs")

    dec = _Flow(
        "decoder",
        {
            option(reg, "quants_write_key"): "FSQ codes",
            option(pipe, "noised_images_read_key"): "the noised latents",
            option(pipe, "timesteps_read_key"): "the timesteps",
        },
    )
    dec.read(pipe, "latents_read_key", "FSQ codes")
    for m in _modules(cfg["decoder"]).values():
        role = _role(m)
        if role == "from_codes":
            dec.read(m, "read_key", "FSQ codes")
            dec.write(m, "write_key", "projected codes")
        elif role == "posemb" and len(m["max_sizes"]) == 1:
            dec.read(m, "read_key", "projected codes")
            dec.write(m, "write_key", "register condition")
        elif role == "nested_dropout":
            dec.read(m, "read_write_key", "register condition")
            dec.write(m, "read_write_key", "masked register condition")
        elif role == "null_cond":
            dec.read(m, "read_write_key", "masked register condition")
            dec.write(m, "read_write_key", "guided register condition")
        elif role == "layout" and m["per_sample_op"]["_target_"].endswith("channels_first_to_last"):
            dec.read(m, "read_key", "the noised latents")
            dec.write(m, "write_key", "channels-last noised latents")
        elif role == "patch_embed":
            dec.read(m, "input_tensor_list_read_key", "channels-last noised latents")
            dec.write(m, "patches_list_write_key", "patch tokens")
        elif role == "posemb":
            dec.read(m, "read_key", "patch tokens")
            dec.write(m, "write_key", "position-embedded patches")
        elif role == "packer":
            _packed(dec, m, ["position-embedded patches", "guided register condition"])
        elif role == "time_embed":
            dec.read(m, "timesteps_read_key", "the timesteps")
            dec.write(m, "time_embedding_write_key", "the time embedding")
        elif role == "transformer":
            _trunk(dec, m, adaln=True)
        elif role == "unpacker":
            _unpack(dec, m, ["patch outputs", "register outputs"])
        elif role == "dec_head":
            dec.read(m, "read_key", "patch outputs")
            dec.read(m, "adaLN_emb_read_key", "the time embedding")
            dec.write(m, "write_key", "channels-last velocity")
        elif role == "layout":
            dec.read(m, "read_key", "channels-last velocity")
            dec.write(m, "write_key", "the velocity")
    dec.read(pipe, "reconst_write_key", "the velocity")
    if option(vae, "vae_latents_read_key") != option(pipe, "reconst_write_key"):
        raise CheckpointError("the official VAE does not decode what the official pipeline writes")


def _packed(flow: _Flow, m: dict[str, Any], inputs: list[str]) -> None:
    keys = option(m, "input_list_read_keys")
    if not isinstance(keys, list) or len(keys) != len(inputs):
        raise CheckpointError(f"official {flow.where} packer must pack {' and '.join(inputs)}, got {keys!r}")
    for key, tag in zip(keys, inputs, strict=True):
        if flow.keys.get(key) != tag:
            raise CheckpointError(
                f"official {flow.where} packer input {key!r} holds {flow.keys.get(key, 'nothing')}, expected {tag}"
            )
    flow.write(m, "packed_seq_write_key", "the packed sequence")
    flow.write(m, "block_mask_write_key", "the block mask")
    flow.write(m, "inner_packed_shapes_write_key", "inner packed shapes")
    flow.write(m, "outer_packed_shapes_write_key", "outer packed shapes")
    flow.write(m, "emb_packing_fn_write_key", "the packing function")


def _trunk(flow: _Flow, m: dict[str, Any], adaln: bool) -> None:
    flow.read(m, "input_seq_read_key", "the packed sequence")
    # Without the packer's mask the official trunk would attend across the images of a call.
    flow.read(m, "block_mask_read_key", "the block mask")
    if adaln:
        flow.read(m, "adaLN_emb_read_key", "the time embedding")
        flow.read(m, "adaLN_packing_fn_read_key", "the packing function")
    elif option(m, "adaLN_emb_read_key") is not None:
        raise CheckpointError("the official encoder transformer reads an adaLN embedding; the encoder has none")
    flow.write(m, "output_seq_write_key", "the trunk output")


def _unpack(flow: _Flow, m: dict[str, Any], outputs: list[str]) -> None:
    flow.read(m, "packed_seq_read_key", "the trunk output")
    flow.read(m, "inner_packed_shapes_read_key", "inner packed shapes")
    flow.read(m, "outer_packed_shapes_read_key", "outer packed shapes")
    keys = option(m, "inner_seq_write_keys")
    if not isinstance(keys, list) or len(keys) != len(outputs):
        raise CheckpointError(f"official {flow.where} unpacker must write {len(outputs)} sequences, got {keys!r}")
    for key, tag in zip(keys, outputs, strict=True):
        flow.keys[key] = tag


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

    Options absent from the config take the official constructor defaults (:mod:`flexitok.io.official_options`).
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


def official_key_map(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """Ordered (official prefix -> flexitok prefix) renames, built from the official module names."""
    enc = {_role(m): n for n, m in _modules(cfg["encoder"]).items()}
    dec: dict[str, str] = {}
    for n, m in _modules(cfg["decoder"]).items():
        role = _role(m)
        if role == "posemb":
            role = "register_posemb" if len(option(m, "max_sizes")) == 1 else "posemb"
        dec[role] = n
    e, d = "encoder.module_dict.", "decoder.module_dict."
    return [
        ("vae.", "vae."),
        (f"{e}{enc['patch_embed']}.patch_proj.", "encoder.patch_embed.proj."),
        (f"{e}{enc['posemb']}.posembs", "encoder.posemb.table"),
        (f"{e}{enc['registers']}.registers", "encoder.registers"),
        (f"{e}{enc['transformer']}.blocks.", "encoder.trunk.blocks."),
        (f"{e}{enc['enc_head']}.proj.", "encoder.head.proj."),
        (f"{d}{dec['from_codes']}.proj.", "decoder.from_codes."),
        (f"{d}{dec['register_posemb']}.posembs", "decoder.register_posemb"),
        (f"{d}{dec['nested_dropout']}.dropout_mask_token", "decoder.mask_token"),
        (f"{d}{dec['null_cond']}.nullcond", "decoder.null_cond"),
        (f"{d}{dec['patch_embed']}.patch_proj.", "decoder.patch_embed.proj."),
        (f"{d}{dec['posemb']}.posembs", "decoder.posemb.table"),
        (f"{d}{dec['time_embed']}.mlp.", "decoder.time_embed.mlp."),
        (f"{d}{dec['transformer']}.blocks.", "decoder.trunk.blocks."),
        (f"{d}{dec['dec_head']}.adaLN_modulation.", "decoder.head.adaLN_modulation."),
        (f"{d}{dec['dec_head']}.proj.", "decoder.head.proj."),
    ]


def _dropped(key: str, cfg: dict[str, Any]) -> bool:
    """Official tensors that cannot affect inference: the VAE's learnable loss log-variance, diffusers' fused
    q/k/v copies (``compile_encode_fn``) and extra registers nothing in the FlexTok graph reads."""
    if key == "vae.logvar" or (key.startswith("vae.vae.") and (".to_qkv." in key or ".to_kv." in key)):
        return True
    regs = [n for n, m in _modules(cfg["encoder"]).items() if _role(m) == "registers"]
    return any(key == f"encoder.module_dict.{n}.extra_registers" for n in regs)


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for src, dst in rules:
        if key.startswith(src):
            return dst + key[len(src) :]
    return None


def _to_ours(new: str, value: Tensor) -> Tensor:
    if new == "decoder.register_posemb":
        return value.reshape(value.shape[-2], value.shape[-1]).t()  # [1, 1, D, N] -> [N, D]
    return value


def convert_state_dict(tensors: dict[str, Tensor], cfg: dict[str, Any]) -> dict[str, Tensor]:
    """Rename official keys to flexitok keys; unknown keys raise CheckpointError."""
    rules = official_key_map(cfg)
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in tensors.items():
        if _dropped(key, cfg):
            continue
        new = _rename(key, rules)
        if new is None:
            unknown.append(key)
        else:
            out[new] = _to_ours(new, value)
    if unknown:
        raise CheckpointError(f"{len(unknown)} official keys have no flexitok counterpart (e.g. {unknown[:5]})")
    return out


def read_safetensors_header(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Names, shapes and dtypes (as meta tensors, no data) and the header metadata of a checkpoint."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {}
            for k in f.keys():
                sl = f.get_slice(k)
                shapes[k] = torch.empty(sl.get_shape(), dtype=_DTYPES.get(sl.get_dtype(), torch.float32), device="meta")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read {path}: the file is truncated or not a safetensors checkpoint ({e})") from e
    return shapes, meta


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _stream_load(model: nn.Module, path: Path, cfg: dict[str, Any]) -> None:
    """Copy the checkpoint into ``model`` one tensor at a time (peak memory: the model plus one tensor), after
    checking names and shapes as strictly as :func:`flexitok.io.checkpoint.load_state_dict_strict`."""
    rules = official_key_map(cfg)
    own = model.state_dict()
    try:
        with safe_open(str(path), framework="pt") as f:
            names: dict[str, str] = {}
            shapes: dict[str, tuple[int, ...]] = {}
            unknown = []
            for key in f.keys():
                if _dropped(key, cfg):
                    continue
                new = _rename(key, rules)
                if new is None:
                    unknown.append(key)
                    continue
                names[new] = key
                shape = tuple(f.get_slice(key).get_shape())
                # The official decoder register table is [1, 1, D, N]; ours is [N, D] (see _to_ours).
                shapes[new] = shape[-1:] + shape[-2:-1] if new == "decoder.register_posemb" else shape
            problems = []
            if unknown:
                problems.append(f"{len(unknown)} official keys have no flexitok counterpart (e.g. {unknown[:5]})")
            problems += state_dict_problems({k: tuple(v.shape) for k, v in own.items()}, shapes)
            if problems:
                raise CheckpointError(f"official checkpoint {path} does not match the model: " + "; ".join(problems))
            with torch.no_grad():
                for new, key in names.items():
                    own[new].copy_(_to_ours(new, f.get_tensor(key)))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read {path}: the file is truncated or not a safetensors checkpoint ({e})") from e


def infer_vae_config(tensors: dict[str, Tensor], norm_num_groups: int | None = None) -> dict[str, Any]:
    """Rebuild a diffusers AutoencoderKL config from ``vae.vae.*`` weights.

    Everything but ``norm_num_groups`` (GroupNorm has no group count in its weights) is read off the tensors;
    that one defaults to the diffusers default 32, or the largest count that divides every block width when
    32 does not. Pass the VAE's ``config.json`` when it is available.
    """
    p = "vae.vae."
    if f"{p}encoder.conv_in.weight" not in tensors:
        raise CheckpointError("the checkpoint holds no VAE weights (vae.vae.*)")
    blocks = sorted(
        {int(m.group(1)) for k in tensors if (m := re.match(rf"{re.escape(p)}encoder\.down_blocks\.(\d+)\.", k))}
    )
    channels = [int(tensors[f"{p}encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in blocks]
    layers = len({k.split(".")[5] for k in tensors if k.startswith(f"{p}encoder.down_blocks.0.resnets.")})
    if norm_num_groups is None:
        norm_num_groups = math.gcd(32, *channels)
    return {
        "in_channels": int(tensors[f"{p}encoder.conv_in.weight"].shape[1]),
        "out_channels": int(tensors[f"{p}decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(blocks),
        "up_block_types": ["UpDecoderBlock2D"] * len(blocks),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "latent_channels": int(tensors[f"{p}decoder.conv_in.weight"].shape[1]),
        "norm_num_groups": norm_num_groups,
        "mid_block_add_attention": any(k.startswith(f"{p}encoder.mid_block.attentions.") for k in tensors),
        "use_quant_conv": f"{p}quant_conv.weight" in tensors,
        "use_post_quant_conv": f"{p}post_quant_conv.weight" in tensors,
    }


_VAE_ARCH_KEYS = ("block_out_channels", "down_block_types", "latent_channels")


def official_base_vae_config(latent_channels: int) -> dict[str, Any]:
    """The AutoencoderKL the official wrapper builds when ``hf_hub_path`` is unset (an SD-style f8 VAE)."""
    return {**sd_style_vae_config(latent_channels), "sample_size": 1024}


def _resolve_vae_config(
    path: Path, cfg: dict[str, Any], tensors: dict[str, Tensor], vae_config: dict | str | Path | None
) -> dict[str, Any]:
    if isinstance(vae_config, dict):
        if any(k in vae_config for k in _VAE_ARCH_KEYS):
            return dict(vae_config)
        # A partial dict (e.g. {"norm_num_groups": 8}) overrides what the weights cannot tell.
        return {**infer_vae_config(tensors), **vae_config}
    candidates = []
    if vae_config is not None:
        candidates.append(Path(vae_config))
    hub = option(cfg["vae"], "hf_hub_path")
    if hub is None and vae_config is None:
        return official_base_vae_config(int(option(cfg["vae"], "latent_channels")))
    if isinstance(hub, str):
        candidates.append(path.parent / hub)  # the official fixture stores a path relative to the checkpoint
    for c in candidates:
        f = c / "config.json" if c.is_dir() else c
        if f.is_file():
            return json.loads(f.read_text())
    if hub and "/" in str(hub) and not str(hub).startswith("."):
        try:  # a hub repo id: fetch only its config (needs network)
            from huggingface_hub import hf_hub_download

            return json.loads(Path(hf_hub_download(str(hub), "config.json")).read_text())
        except Exception:  # offline or unknown repo: fall back to the weights
            pass
    warnings.warn(
        "no VAE config found: the VAE architecture is inferred from the weights, guessing norm_num_groups "
        "(GroupNorm weights do not record it); pass vae_config={'norm_num_groups': G} or the VAE's config.json",
        stacklevel=3,
    )
    return infer_vae_config(tensors)


def load_official(
    path: str | Path,
    vae_config: dict | str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    mup_base_width: int | tuple[int, int] | None = None,
    dtype: torch.dtype | None = None,
) -> FlexTok:
    """Build a :class:`flexitok.FlexTok` from an official-format ``model.safetensors``.

    The VAE architecture comes from ``vae_config`` (a diffusers config dict, or a folder/file with
    ``config.json``), else from ``<checkpoint dir>/<hf_hub_path>/config.json``, else the hub, else the weights
    (the official base SD-VAE when ``hf_hub_path`` is unset). ``image_size`` sets the native size (the
    ``detokenize`` default); ``mup_base_width`` is needed only for muP readout heads. ``dtype`` (default float32)
    builds the model in that dtype; weights are copied in one tensor at a time, so loading needs little more
    memory than the model itself.
    """
    from flexitok.models.flextok import FlexTok

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    tensors, meta = read_safetensors_header(path)
    if "_target_" in meta:
        cfg = parse_metadata(meta)
    elif (path.parent / "config.json").is_file():
        # Hub repos saved with PyTorchModelHubMixin keep the Hydra config in config.json instead.
        try:
            blob = json.loads((path.parent / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"cannot parse {path.parent / 'config.json'}: {e}") from e
        cfg = blob.get("config", blob) if isinstance(blob, dict) else {}
        cfg.setdefault("_target_", "flextok.flextok_wrapper.FlexTok")
    else:
        raise CheckpointError(f"{path} has no official FlexTok config (no '_target_' metadata and no config.json)")
    if cfg["_target_"] not in ("flextok.flextok_wrapper.FlexTok", "flextok.flextok_wrapper.FlexTokFromHub"):
        raise CheckpointError(f"{path} is a {cfg['_target_']!r} checkpoint, not a FlexTok one")
    vcfg = _resolve_vae_config(path, cfg, tensors, vae_config)
    config = config_from_official(cfg, vcfg, image_size, mup_base_width)
    config.vae.pretrained = None  # the weights come from the checkpoint itself
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype or torch.float32)  # allocate the weights once, in the target dtype
    try:
        model = FlexTok(config)
    finally:
        torch.set_default_dtype(default)
    _stream_load(model, path, cfg)
    return model.to(dtype) if dtype is not None else model


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


_ST_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}  # fmt: skip


def _write_safetensors_streaming(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file one tensor at a time (``safetensors.torch.save_file`` first copies every tensor
    into bytes, doubling the memory of a paper-size model)."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # 8-byte aligned data, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for t in tensors.values():
            f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # one tensor's copy at a time


def export_official(model: FlexTok, directory: str | Path) -> Path:
    """Write ``model`` as an official-format checkpoint: ``model.safetensors`` (+ ``vae/config.json``)."""
    from flexitok.io.checkpoint import atomic_write, atomic_write_json

    directory = Path(directory)
    meta = official_metadata(model.config)
    cfg = parse_metadata(meta)
    ours_to_official = [(dst, src) for src, dst in official_key_map(cfg)]
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        new = _rename(key, ours_to_official)
        if new is None:
            raise CheckpointError(f"flexitok weight {key!r} has no official counterpart")
        if key == "decoder.register_posemb":
            value = value.t().reshape(1, 1, value.shape[1], value.shape[0])
        # No copies of contiguous CPU weights: a paper-size model is written with little extra memory.
        out[new] = value.detach().to("cpu").contiguous()
    atomic_write(directory / "model.safetensors", lambda p: _write_safetensors_streaming(p, out, meta))
    assert isinstance(model.vae, DiffusersVAE)  # official_metadata refused other VAEs
    atomic_write_json(directory / "vae" / "config.json", dict(model.vae.vae.config))
    return directory
