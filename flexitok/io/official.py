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

from torch import Tensor

from flexitok.config import DecoderConfig, EncoderConfig, FlexTokConfig, TransformerConfig, VAEConfig
from flexitok.errors import CheckpointError
from flexitok.io.checkpoint import load_state_dict_strict, read_safetensors
from flexitok.models.vae import DiffusersVAE

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
}

# Options whose value changes the forward computation; we only accept the values we implement.
_SUPPORTED_VALUES: dict[str, dict[str, set[Any]]] = {
    "posemb": {"posemb_scaling": {"absolute"}},
    "transformer": {"use_bias": {False}, "qk_norm": {True, False}, "use_act_checkpoint": {True, False}},
    "enc_head": {"use_mup_readout": {False}},
    "dec_head": {"use_mup_readout": {False}},
    "patch_embed": {"flatten_patches": {False}},
    "packer": {"mask_mode": {"causal_last", "full"}},
    "registers": {"ordering_mode": {"nested"}},
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


def _find(modules: dict[str, Any], role: str, where: str, pred: Callable[[dict], bool] = lambda m: True) -> dict:
    hits = [m for m in modules.values() if isinstance(m, dict) and _role(m) == role and pred(m)]
    if len(hits) != 1:
        raise CheckpointError(f"expected exactly one {role} module in the official {where}, found {len(hits)}")
    return hits[0]


def _check_options(node: dict[str, Any], where: str) -> None:
    for opt, allowed in _SUPPORTED_VALUES.get(_role(node), {}).items():
        if opt in node and node[opt] not in allowed:
            raise CheckpointError(
                f"official {where} option {opt}={node[opt]!r} is not supported (supported: {sorted(map(str, allowed))})"
            )


def _transformer(node: dict[str, Any], where: str) -> TransformerConfig:
    _check_options(node, where)
    dim = int(node["dim"])
    mlp_ratio = float(node.get("mlp_ratio", 4.0))
    return TransformerConfig(
        dim=dim,
        depth=int(node["depth"]),
        head_dim=int(node.get("head_dim", 64)),
        mlp_ratio=mlp_ratio,
        qk_norm=bool(node.get("qk_norm", True)),
        attn_scale_base=8.0,
    )


def _grid(node: dict[str, Any]) -> tuple[int, int]:
    sizes = node["max_sizes"]
    if len(sizes) != 2:
        raise CheckpointError(f"expected a 2-D patch position embedding, got max_sizes={sizes}")
    return int(sizes[0]), int(sizes[1])


def config_from_official(
    cfg: dict[str, Any], vae_config: dict[str, Any] | None = None, image_size: tuple[int, int] | None = None
) -> FlexTokConfig:
    """Translate the parsed official config into a :class:`FlexTokConfig`.

    Official checkpoints do not store an image size: any size whose patch grid fits the position table works.
    By default we take the largest (table size x patch size x VAE downsampling).
    """
    _check_targets(cfg)
    for key in ("vae", "encoder", "decoder", "regularizer"):
        if not isinstance(cfg.get(key), dict):
            raise CheckpointError(f"official config has no {key!r} section")
    enc_mods = cfg["encoder"].get("module_dict", {})
    dec_mods = cfg["decoder"].get("module_dict", {})
    for mods, where in ((enc_mods, "encoder"), (dec_mods, "decoder")):
        for name, m in mods.items():
            if isinstance(m, dict) and "_target_" in m:
                _check_options(m, f"{where}.{name}")

    e_patch = _find(enc_mods, "patch_embed", "encoder")
    e_pos = _find(enc_mods, "posemb", "encoder")
    e_regs = _find(enc_mods, "registers", "encoder")
    e_tr = _find(enc_mods, "transformer", "encoder")
    e_head = _find(enc_mods, "enc_head", "encoder")
    if _find(enc_mods, "packer", "encoder")["mask_mode"] != "causal_last":
        raise CheckpointError("official encoder packer must use mask_mode 'causal_last'")
    if e_pos.get("posemb_type", "sincos") != "sincos":
        raise CheckpointError(f"unsupported encoder posemb_type {e_pos.get('posemb_type')!r}")

    d_patch = _find(dec_mods, "patch_embed", "decoder")
    d_pos = _find(dec_mods, "posemb", "decoder", lambda m: len(m["max_sizes"]) == 2)
    d_regpos = _find(dec_mods, "posemb", "decoder", lambda m: len(m["max_sizes"]) == 1)
    d_tr = _find(dec_mods, "transformer", "decoder")
    d_null = _find(dec_mods, "null_cond", "decoder")
    d_time = _find(dec_mods, "time_embed", "decoder")
    _find(dec_mods, "nested_dropout", "decoder")
    _find(dec_mods, "dec_head", "decoder")
    if _find(dec_mods, "packer", "decoder")["mask_mode"] != "full":
        raise CheckpointError("official decoder packer must use mask_mode 'full'")
    if d_pos.get("posemb_type", "sincos") != "sincos" or d_regpos.get("posemb_type") != "learnable_sum":
        raise CheckpointError("unsupported decoder position embedding types")

    n_max = e_regs.get("n_max", e_regs.get("n_min"))
    if n_max is None:
        raise CheckpointError("official encoder registers name no register count (n_max / n_min)")
    n_regs = int(n_max)
    if int(d_regpos["max_sizes"][0]) != n_regs:
        raise CheckpointError(
            f"decoder register posemb covers {d_regpos['max_sizes'][0]} positions, encoder has {n_regs}"
        )
    levels = tuple(int(x) for x in cfg["regularizer"]["levels"])
    if int(e_head["dim_out"]) != len(levels):
        raise CheckpointError(f"encoder head outputs {e_head['dim_out']} values but FSQ has {len(levels)} levels")

    v = cfg["vae"]
    latent_c = int(v.get("latent_channels", 16))
    for p in (e_patch, d_patch):
        if int(p["channels_in"]) != latent_c:
            raise CheckpointError(f"patch embedder takes {p['channels_in']} channels, VAE has {latent_c}")
    vcfg = dict(vae_config) if vae_config else None
    downsample = 8
    if vcfg is not None:
        downsample = 2 ** (len(vcfg.get("block_out_channels", [0, 0, 0, 0])) - 1)
    scaling = v.get("scaling_factor") or (vcfg or {}).get("scaling_factor") or 1.0
    vae = VAEConfig(
        kind="diffusers",
        latent_channels=latent_c,
        downsample=downsample,
        scaling_factor=float(scaling),
        sample_posterior=bool(v.get("sample_posterior", False)),
        diffusers_config=vcfg,
        pretrained=v.get("hf_hub_path"),
    )
    e_grid, d_grid = _grid(e_pos), _grid(d_pos)
    e_ps = tuple(int(x) for x in e_patch["patch_sizes"])
    largest = (e_grid[0] * e_ps[0] * downsample, e_grid[1] * e_ps[1] * downsample)
    if image_size is None:
        image_size = largest
    elif image_size[0] > largest[0] or image_size[1] > largest[1]:
        raise CheckpointError(f"image_size {tuple(image_size)} exceeds what the position tables cover ({largest})")
    return FlexTokConfig(
        image_size=tuple(image_size),  # type: ignore[arg-type]
        vae=vae,
        encoder=EncoderConfig(
            transformer=_transformer(e_tr, "encoder transformer"),
            patch_size=e_ps,  # type: ignore[arg-type]
            n_registers=n_regs,
            posemb_grid=e_grid,
        ),
        decoder=DecoderConfig(
            transformer=_transformer(d_tr, "decoder transformer"),
            patch_size=tuple(int(x) for x in d_patch["patch_sizes"]),  # type: ignore[arg-type]
            posemb_grid=d_grid,
            adaln_expansion=int(d_tr.get("adaLN_expansion", 1)),
            max_timestep=float(d_time.get("max_timestep", 1.0)),
            learned_null_cond=d_null["_target_"].endswith("LearnedNullCond"),
        ),
        fsq_levels=levels,
    )


def official_key_map(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """Ordered (official prefix -> flexitok prefix) renames, built from the official module names."""
    enc = {_role(m): n for n, m in cfg["encoder"]["module_dict"].items() if isinstance(m, dict)}
    dec_mods = cfg["decoder"]["module_dict"]
    dec: dict[str, str] = {}
    for n, m in dec_mods.items():
        role = _role(m)
        if role == "posemb":
            role = "register_posemb" if len(m["max_sizes"]) == 1 else "posemb"
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


def convert_state_dict(tensors: dict[str, Tensor], cfg: dict[str, Any]) -> dict[str, Tensor]:
    """Rename official keys to flexitok keys; unknown keys raise CheckpointError."""
    rules = official_key_map(cfg)
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in tensors.items():
        for src, dst in rules:
            if key.startswith(src):
                new = dst + key[len(src) :]
                if new == "decoder.register_posemb":
                    value = value.reshape(value.shape[-2], value.shape[-1]).t()  # [1, 1, D, N] -> [N, D]
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{len(unknown)} official keys have no flexitok counterpart (e.g. {unknown[:5]})")
    return out


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
    hub = cfg["vae"].get("hf_hub_path")
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
    path: str | Path, vae_config: dict | str | Path | None = None, image_size: tuple[int, int] | None = None
) -> FlexTok:
    """Build a :class:`flexitok.FlexTok` from an official-format ``model.safetensors``.

    The VAE architecture comes from ``vae_config`` (a diffusers config dict, or a folder/file with
    ``config.json``), else from ``<checkpoint dir>/<hf_hub_path>/config.json``, else the hub, else the weights.
    """
    from flexitok.models.flextok import FlexTok

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    tensors, meta = read_safetensors(path)
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
    config = config_from_official(cfg, vcfg, image_size)
    config.vae.pretrained = None  # the weights come from the checkpoint itself
    model = FlexTok(config)
    load_state_dict_strict(model, convert_state_dict(tensors, cfg), f"official checkpoint {path}")
    return model


def official_metadata(config: FlexTokConfig) -> dict[str, str]:
    """The official header metadata (Hydra config as Python-literal strings) describing ``config``.

    Only the constructor arguments that affect the forward computation plus the read/write keys the official
    module graph needs are written.
    """
    if config.vae.kind != "diffusers":
        raise CheckpointError("only models with a diffusers VAE can be exported to the official format")
    e, d, c = config.encoder, config.decoder, config.vae.latent_channels
    et, dt = e.transformer, d.transformer
    for trunk in (et, dt):
        if trunk.attn_scale_base != 8.0 or trunk.mlp_hidden is not None:
            raise CheckpointError("the official format needs attn_scale_base=8 and the default MLP width")
    lat = config.latent_size
    e_grid = e.posemb_grid or (lat[0] // e.patch_size[0], lat[1] // e.patch_size[1])
    d_grid = d.posemb_grid or (lat[0] // d.patch_size[0], lat[1] // d.patch_size[1])

    def t(name: str, **kw: Any) -> dict[str, Any]:
        return {"_target_": name, **kw}

    def tr(x: TransformerConfig, **kw: Any) -> dict[str, Any]:
        return t(_P + "trunks.transformers.FlexTransformer", dim=x.dim, depth=x.depth, head_dim=x.head_dim,
                 mlp_ratio=x.mlp_ratio, qk_norm=x.qk_norm, use_bias=False, **kw)  # fmt: skip

    to_last = t(_P + "utils.dict_ops.channels_first_to_last", _partial_=True)
    encoder = t(_P + "utils.wrappers.SequentialModuleDictWrapper", module_dict={
        "enc_channels_to_last": t(_P + "utils.dict_ops.PerSampleOp", read_key="vae_latents", write_key="enc_vae_latents", per_sample_op=to_last),
        "enc_patch_emb": t(_P + "preprocessors.patching.PatchEmbedder", input_tensor_list_read_key="enc_vae_latents", patches_list_write_key="enc_vae_latents_patched", n_patches_write_key="enc_n_patches", patch_sizes=list(e.patch_size), channels_in=c, dim=et.dim, flatten_patches=False),
        "enc_posemb_module": t(_P + "utils.posembs.PositionalEmbeddingAdder", read_key="enc_vae_latents_patched", write_key="enc_vae_latents_patched", dim=et.dim, max_sizes=list(e_grid), posemb_type="sincos", posemb_scaling="absolute"),
        "enc_register_module": t(_P + "preprocessors.registers.Registers1D", input_tensor_list_read_key="enc_vae_latents_patched", register_sizes_read_write_key="register_sizes", registers_write_key="enc_registers", dim=et.dim, n_min=e.n_registers, n_max=e.n_registers, size_sampling_mode="uniform", ordering_mode="nested"),
        "enc_seq_packer": t(_P + "preprocessors.flex_seq_packing.BlockWiseSequencePacker", input_list_read_keys=["enc_vae_latents_patched", "enc_registers"], packed_seq_write_key="enc_packed_seq", block_mask_write_key="enc_block_mask", inner_packed_shapes_write_key="enc_ps_inner", outer_packed_shapes_write_key="enc_ps_outer", mask_mode="causal_last", pad_to_multiple=128),
        "enc_transformer": tr(et, input_seq_read_key="enc_packed_seq", output_seq_write_key="enc_packed_seq", block_mask_read_key="enc_block_mask"),
        "enc_unpacker": t(_P + "postprocessors.seq_unpacking.SequenceUnpacker", packed_seq_read_key="enc_packed_seq", inner_seq_write_keys=["enc_vae_latents_patched", "enc_registers"], inner_packed_shapes_read_key="enc_ps_inner", outer_packed_shapes_read_key="enc_ps_outer"),
        "enc_to_latents": t(_P + "postprocessors.heads.LinearHead", read_key="enc_registers", write_key="enc_registers", dim=et.dim, dim_out=len(config.fsq_levels), use_mup_readout=False, weight_init_style="xavier"),
    })  # fmt: skip
    null_target = "LearnedNullCond" if d.learned_null_cond else "ZeroNullCond"
    decoder = t(_P + "utils.wrappers.SequentialModuleDictWrapper", module_dict={
        "dec_from_latents": t(_P + "preprocessors.linear.LinearLayer", read_key="enc_registers_quant", write_key="dec_quants", dim_in=len(config.fsq_levels), dim=dt.dim),
        "dec_registers_posemb_module": t(_P + "utils.posembs.PositionalEmbeddingAdder", read_key="dec_quants", write_key="dec_quants", dim=dt.dim, max_sizes=[e.n_registers], posemb_type="learnable_sum", posemb_scaling="absolute"),
        "dec_nested_dropout": t(_P + "preprocessors.token_dropout.MaskedNestedDropout", read_write_key="dec_quants", dim=dt.dim, eval_keep_k_read_key="eval_keep_k", train_keep_k_write_key="train_keep_k", size_sampling_mode="uniform"),
        "dec_latent_dropout": t(_P + f"preprocessors.nullcond.{null_target}", read_write_key="dec_quants", dim=dt.dim, eval_drop_flag_read_key="eval_dropout_mask", dropout_prob=0.2),
        "dec_noise_channels_to_last": t(_P + "utils.dict_ops.PerSampleOp", read_key="vae_latents_noised", write_key="dec_noised_latents", per_sample_op=to_last),
        "dec_noise_patch_emb": t(_P + "preprocessors.patching.PatchEmbedder", input_tensor_list_read_key="dec_noised_latents", patches_list_write_key="dec_patches", n_patches_write_key="dec_n_patches", patch_sizes=list(d.patch_size), channels_in=c, dim=dt.dim, flatten_patches=False),
        "dec_patches_posemb_module": t(_P + "utils.posembs.PositionalEmbeddingAdder", read_key="dec_patches", write_key="dec_patches", dim=dt.dim, max_sizes=list(d_grid), posemb_type="sincos", posemb_scaling="absolute"),
        "dec_seq_packer": t(_P + "preprocessors.flex_seq_packing.BlockWiseSequencePacker", input_list_read_keys=["dec_patches", "dec_quants"], packed_seq_write_key="dec_packed_seq", block_mask_write_key="dec_sa_block_mask", inner_packed_shapes_write_key="dec_ps_inner", outer_packed_shapes_write_key="dec_ps_outer", mask_mode="full", pad_to_multiple=128, emb_packing_fn_write_key="dec_emb_packing_fn", per_subseq_embs=d.adaln_expansion > 1),
        "dec_time_embedder": t(_P + "preprocessors.time_embedding.TimestepEmbedder", timesteps_read_key="timesteps", time_embedding_write_key="dec_temb", dim=dt.dim, max_timestep=d.max_timestep),
        "dec_transformer": tr(dt, input_seq_read_key="dec_packed_seq", output_seq_write_key="dec_packed_seq", block_mask_read_key="dec_sa_block_mask", adaLN_emb_read_key="dec_temb", adaLN_packing_fn_read_key="dec_emb_packing_fn", adaLN_expansion=d.adaln_expansion),
        "dec_unpacker": t(_P + "postprocessors.seq_unpacking.SequenceUnpacker", packed_seq_read_key="dec_packed_seq", inner_seq_write_keys=["dec_patches", "dec_quants"], inner_packed_shapes_read_key="dec_ps_inner", outer_packed_shapes_read_key="dec_ps_outer"),
        "dec_to_patches": t(_P + "postprocessors.heads.ToPatchesLinearHead", read_key="dec_patches", write_key="dec_pred_bhwc", dim=dt.dim, channels_out=c, patch_sizes=list(d.patch_size), use_mup_readout=False, weight_init_style="xavier", adaLN_emb_read_key="dec_temb"),
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


def export_official(model: FlexTok, directory: str | Path) -> Path:
    """Write ``model`` as an official-format checkpoint: ``model.safetensors`` (+ ``vae/config.json``)."""
    from flexitok.io.checkpoint import atomic_write_json, save_safetensors

    directory = Path(directory)
    meta = official_metadata(model.config)
    cfg = parse_metadata(meta)
    ours_to_official = [(dst, src) for src, dst in official_key_map(cfg)]
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        for src, dst in ours_to_official:
            if key.startswith(src):
                if key == "decoder.register_posemb":
                    value = value.t().reshape(1, 1, value.shape[1], value.shape[0])
                out[dst + key[len(src) :]] = value
                break
    save_safetensors(out, directory / "model.safetensors", metadata=meta)
    assert isinstance(model.vae, DiffusersVAE)  # official_metadata refused other VAEs
    atomic_write_json(directory / "vae" / "config.json", dict(model.vae.vae.config))
    return directory
