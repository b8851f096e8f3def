"""Every constructor option of the official (apple/ml-flextok) modules a checkpoint config can name.

For each official class (keyed by its short name) :data:`OFFICIAL_OPTIONS` lists each constructor argument with
the official default and what flexitok does with it:

* ``supported``: translated into :class:`flexitok.config.FlexTokConfig` (or checked) with the official semantics;
* ``wiring``: a data-dict key; supported by checking that the keys connect the modules the way FlexTok does
  (:func:`flexitok.io.official.wiring.check_wiring`);
* ``no-effect``: supported; it cannot change results (padding, compilation, attention back-end);
* ``training``: accepted; it only matters during official training (dropout rates, sampling modes, inits);
* a ``refused`` entry lists the values flexitok implements in ``allowed``; any other value is refused with
  ``why``.

A checkpoint option missing from this table is refused too (the official constructor has no such argument, so
the official code could not build the model either). ``docs/official-checkpoints.md`` embeds
:func:`options_markdown`, and a test keeps the two in sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from flexitok.errors import CheckpointError

Status = Literal["supported", "wiring", "no-effect", "training"]


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Opt:
    """One official constructor argument: its default, flexitok's handling and, when only some values are
    implemented, which ones (``allowed``) and why the others are refused (``why``)."""

    status: Status
    default: Any = REQUIRED
    note: str = ""
    allowed: tuple[Any, ...] | None = None
    why: str = ""


def _keys(*names: str, default: Any = REQUIRED) -> dict[str, Opt]:
    return {n: Opt("wiring", default) for n in names}


_OFFICIAL_FAILS = "the official code rejects any other value too"
_NOT_READ = "no FlexTok module writes it, so the official forward fails with a KeyError"
_TRUNK_WHY = (
    "a different transformer trunk than FlexTok's (bias-free, gated SiLU MLP: the official defaults, used by every "
    "FlexTok model); not implemented"
)
_NORM = "the affine-free Fp32LayerNorm (the default), any eps"
_NORM_WHY = "other norms, or LayerNorm affine weights, are a different architecture that no FlexTok model uses"

OFFICIAL_OPTIONS: dict[str, dict[str, Opt]] = {
    "FlexTok": {
        name: Opt("supported", note="the module graph")
        for name in ("vae", "encoder", "decoder", "regularizer", "flow_matching_noise_module", "pipeline")
    },
    "FlexTokFromHub": {"config": Opt("supported", note="the same config, from config.json")},
    "StableDiffusionVAE": {
        **_keys("images_read_key", "vae_latents_read_key", "vae_latents_write_key", "images_reconst_write_key"),
        "vae_kl_loss_write_key": Opt("training", None, "KL loss output"),
        "latent_channels": Opt("supported", 16),
        "scaling_factor": Opt("supported", None, "falls back to the VAE config's when unset or 0"),
        "dtype_override": Opt("supported", "fp32", "VAE encode/decode precision (autocast)"),
        "hf_hub_path": Opt("supported", None, "source of the VAE architecture; unset = the official base SD-VAE"),
        "sample_posterior": Opt("supported", True, "tokenize(deterministic=None) follows it"),
        "learnable_logvar": Opt("training", False, "loss weighting; its `vae.logvar` tensor is dropped"),
        "logvar_init": Opt("training", 0.0),
        "compile_encode_fn": Opt("no-effect", False, "torch.compile; fused `to_qkv` copies are dropped"),
        "force_vae_encode": Opt("training", True, "re-encode pre-computed latents"),
        "frozen": Opt("training", False),
    },
    "SequentialModuleDictWrapper": {"module_dict": Opt("supported", note="module roles and order are checked")},
    "Fp32LayerNorm": {
        "normalized_shape": Opt("supported", note="bound by the module using it"),
        "eps": Opt("supported", 1e-5, "the trunk's eps; a head norm must use the same"),
        "elementwise_affine": Opt("supported", True, allowed=(False,), why=_NORM_WHY),
        "bias": Opt("supported", True, note="no effect without affine weights"),
    },
    "SiLU": {"inplace": Opt("no-effect", False)},
    "PerSampleOp": {
        **_keys("read_key", "write_key"),
        "per_sample_op": Opt("supported", note="channels_first_to_last / channels_last_to_first"),
    },
    "channels_first_to_last": {},
    "channels_last_to_first": {},
    "PatchEmbedder": {
        **_keys("input_tensor_list_read_key", "patches_list_write_key"),
        "n_patches_write_key": Opt("no-effect", note="patch counts; nothing in FlexTok reads them"),
        "patch_sizes": Opt("supported"),
        "channels_in": Opt("supported"),
        "dim": Opt("supported", None, "None: no projection, the flattened patches are the tokens"),
        "flatten_patches": Opt(
            "supported",
            True,
            "encoder: one raster-order patch sequence with a 1-D learned table; refused in the decoder (the "
            "official ToPatchesLinearHead cannot un-patchify a flat sequence) and with a 2-D sincos table (the "
            "official forward fails)",
        ),
        "weight_init_style": Opt("training", "xavier"),
    },
    "PositionalEmbeddingAdder": {
        **_keys("read_key", "write_key"),
        "dim": Opt("supported"),
        "max_sizes": Opt("supported", note="table size; the image size per call may be anything that fits"),
        "posemb_type": Opt(
            "supported",
            "sincos",
            "sincos, learnable_sum, learnable_prod; a 1-D sincos table is refused (it fails in the official code)",
            ("sincos", "learnable_sum", "learnable_prod"),
            _OFFICIAL_FAILS,
        ),
        "posemb_scaling": Opt(
            "supported",
            "absolute",
            "absolute (top-left crop), interpolate (bilinear, align_corners=True); interpolate on a 1-D table is "
            "refused (bilinear interpolation fails on it in the official code)",
            ("absolute", "interpolate"),
            _OFFICIAL_FAILS,
        ),
        "posemb_write_key": Opt("no-effect", None, "an extra copy of the embedding; nothing in FlexTok reads it"),
    },
    "Registers1D": {
        **_keys("input_tensor_list_read_key", "register_sizes_read_write_key", "registers_write_key"),
        "dim": Opt("supported"),
        "n_min": Opt("training", note="smallest sampled register count"),
        "n_max": Opt("supported", note="learned registers = decoder token capacity"),
        "n_eval": Opt("supported", None, "registers (= tokens) at inference"),
        "size_sampling_mode": Opt("training", "uniform"),
        "ordering_mode": Opt(
            "supported",
            "nested",
            "nested (first n), avg_pool (adaptive average pooling to n)",
            ("nested", "avg_pool"),
            _OFFICIAL_FAILS,
        ),
        "extra_registers_write_key": Opt("no-effect", None, "a second register set nothing in FlexTok reads; dropped"),
        "extra_registers_dim": Opt("no-effect", None),
    },
    "BlockWiseSequencePacker": {
        **_keys(
            "input_list_read_keys",
            "packed_seq_write_key",
            "block_mask_write_key",
            "inner_packed_shapes_write_key",
            "outer_packed_shapes_write_key",
        ),
        "mask_mode": Opt(
            "supported", "full", "full, causal, causal_last", ("full", "causal", "causal_last"), _OFFICIAL_FAILS
        ),
        "max_seq_len": Opt("no-effect", None, "padding; padded positions are masked out"),
        "pad_to_multiple": Opt("no-effect", None, "padding; padded positions are masked out"),
        "emb_packing_fn_write_key": Opt("wiring", None),
        "per_subseq_embs": Opt(
            "supported", False, "must match adaLN_expansion", why="any other combination fails in the official code"
        ),
        "compile_block_mask": Opt("no-effect", True, "flex_attention back-end"),
        "return_materialized_mask": Opt("no-effect", False, "dense-mask SDPA back-end"),
    },
    "FlexTransformer": {
        **_keys("input_seq_read_key", "output_seq_write_key"),
        "dim": Opt("supported", 768),
        "depth": Opt("supported", 12),
        "head_dim": Opt("supported", 64),
        "mlp_ratio": Opt("supported", 4.0),
        "qkv_bias": Opt("supported", False, allowed=(False,), why=_TRUNK_WHY),
        "proj_bias": Opt("supported", False, allowed=(False,), why=_TRUNK_WHY),
        "mlp_bias": Opt("supported", False, allowed=(False,), why=_TRUNK_WHY),
        "drop": Opt("training", 0.0, "dropout"),
        "drop_path_rate": Opt("training", 0.0, "stochastic depth"),
        "act_layer": Opt("supported", "SiLU", "torch.nn.SiLU", why=_TRUNK_WHY),
        "norm_layer": Opt("supported", "Fp32LayerNorm", _NORM, why=_NORM_WHY),
        "gated_mlp": Opt("supported", True, allowed=(True,), why=_TRUNK_WHY),
        "qk_norm": Opt("supported", True),
        "use_act_checkpoint": Opt("training", False, "activation checkpointing"),
        "weight_init_style": Opt("training", "xavier"),
        "zero_init_query_proj": Opt("training", False),
        "block_mask_read_key": Opt("wiring", None),
        "score_mod_read_key": Opt("supported", None, allowed=(None,), why=_NOT_READ),
        "adaLN_emb_read_key": Opt("wiring", None, "decoder: the time embedding; encoder: unset"),
        "adaLN_packing_fn_read_key": Opt("wiring", None),
        "adaLN_expansion": Opt("supported", 1, "1 (shared) or 2 (patches / registers)"),
        "rope_forward_read_key": Opt("supported", None, allowed=(None,), why=_NOT_READ),
        "intermediate_layer_write_key": Opt("training", None, "REPA features"),
        "intermediate_layers": Opt("training", [], "REPA features"),
    },
    "SequenceUnpacker": _keys(
        "packed_seq_read_key", "inner_seq_write_keys", "inner_packed_shapes_read_key", "outer_packed_shapes_read_key"
    ),
    "LinearHead": {
        **_keys("read_key", "write_key"),
        "dim": Opt("supported"),
        "dim_out": Opt("supported"),
        "use_mup_readout": Opt("supported", note="input divided by dim / base width; pass mup_base_width"),
        "weight_init_style": Opt("training", "zero"),
        "norm_layer": Opt("supported", "Fp32LayerNorm", _NORM + "; None = no norm", why=_NORM_WHY),
        "dtype_override": Opt("supported", None, "head precision (autocast)"),
        "adaLN_emb_read_key": Opt(
            "supported",
            None,
            allowed=(None,),
            why="the encoder has no time embedding, so the official forward fails with a KeyError",
        ),
        "adaLN_packing_fn_read_key": Opt("no-effect", None, "unused without adaLN"),
        "adaLN_bias": Opt("no-effect", True, "unused without adaLN"),
        "proj_bias": Opt("supported", True),
    },
    "ToPatchesLinearHead": {
        **_keys("read_key", "write_key"),
        "dim": Opt("supported"),
        "channels_out": Opt("supported", note="must equal the VAE latent channels"),
        "patch_sizes": Opt("supported", note="must equal the decoder patch size"),
        "use_mup_readout": Opt("supported", note="input divided by dim / base width; pass mup_base_width"),
        "weight_init_style": Opt("training", "zero"),
        "norm_layer": Opt("supported", "Fp32LayerNorm", _NORM + "; None = no norm", why=_NORM_WHY),
        "dtype_override": Opt("supported", None, "head precision (autocast)"),
        "adaLN_emb_read_key": Opt("wiring", None, "the time embedding"),
        "adaLN_packing_fn_read_key": Opt(
            "supported", None, allowed=(None,), why="the packer's function spans registers too; the official head fails"
        ),
        "adaLN_bias": Opt("supported", True),
        "proj_bias": Opt("supported", True),
    },
    "FSQ": {
        **_keys("latents_read_key", "quants_write_key", "tokens_write_key"),
        "levels": Opt("supported"),
        "drop_quant_p": Opt("training", 0.0),
        "corrupt_tokens_p": Opt("training", 0.0),
        "min_corrupt_tokens_p": Opt("training", None),
        "apply_corrupt_tokens_p": Opt("training", 0.2),
        "packed_call": Opt("no-effect", True, "element-wise either way"),
    },
    "LinearLayer": {
        **_keys("read_key", "write_key"),
        "dim_in": Opt("supported"),
        "dim": Opt("supported"),
        "weight_init_style": Opt("training", "xavier"),
        "dtype_override": Opt("supported", None, "projection precision (autocast)"),
        "proj_bias": Opt("supported", True),
    },
    "MaskedNestedDropout": {
        "read_write_key": Opt("wiring"),
        "dim": Opt("supported"),
        "eval_keep_k_read_key": Opt(
            "supported",
            "eval_keep_k",
            "unset: truncated token lists are decoded from zero-padded ids without mask tokens",
        ),
        "train_keep_k_write_key": Opt("training", "train_keep_k"),
        "size_sampling_mode": Opt("training", "uniform"),
    },
    "LearnedNullCond": {
        "read_write_key": Opt("wiring"),
        "dim": Opt("supported"),
        "eval_drop_flag_read_key": Opt(
            "supported",
            "eval_dropout_mask",
            allowed=("eval_dropout_mask",),
            why="the official pipeline writes the flag under 'eval_dropout_mask'; any other key makes guidance a "
            "silent no-op",
        ),
        "dropout_prob": Opt("training", 0.0, "condition dropout for CFG training"),
        "replace_with_single_token": Opt("supported", False, "the unconditional pass gets one null token"),
    },
    "ZeroNullCond": {
        "read_write_key": Opt("wiring"),
        "eval_drop_flag_read_key": Opt(
            "supported",
            "eval_dropout_mask",
            allowed=("eval_dropout_mask",),
            why="the official pipeline writes the flag under 'eval_dropout_mask'; any other key makes guidance a "
            "silent no-op",
        ),
        "dropout_prob": Opt("training", 0.0, "condition dropout for CFG training"),
    },
    "TimestepEmbedder": {
        **_keys("timesteps_read_key", "time_embedding_write_key"),
        "dim": Opt("supported"),
        "frequency_embedding_size": Opt("supported", 256),
        "weight_init_style": Opt("training", "xavier"),
        "max_timestep": Opt("supported", 1000.0),
        "temb_as_tokens": Opt(
            "supported",
            False,
            allowed=(False,),
            why="the adaLN layers need the [B, D] form; the official forward fails",
        ),
    },
    "MinRFNoiseModule": {
        name: Opt("training", default)
        for name, default in (
            ("clean_images_read_key", REQUIRED),
            ("noised_images_write_key", REQUIRED),
            ("timesteps_write_key", REQUIRED),
            ("sigmas_write_key", REQUIRED),
            ("ln", True),
            ("stratisfied", False),
            ("mode_scale", 0.0),
            ("noise_write_key", "flow_noise"),
            ("noise_read_key", None),
        )
    },
    "MinRFPipeline": {
        "noise_read_key": Opt("supported", None, "flexitok takes the noise as detokenize(noise=...)"),
        "target_sizes_read_key": Opt("no-effect", None, "detokenize always passes the sizes"),
        **_keys("latents_read_key", "timesteps_read_key", "noised_images_read_key", "reconst_write_key", default=None),
        "out_channels": Opt("supported", None, "must equal the VAE latent channels"),
    },
}


def class_name(target: str) -> str:
    return target.rsplit(".", 1)[-1]


def option(node: dict[str, Any], name: str) -> Any:
    """The value of option ``name`` of an official config node, or the official default when it is absent."""
    if name in node:
        return node[name]
    opt = OFFICIAL_OPTIONS[class_name(node["_target_"])][name]
    if opt.default is REQUIRED:
        raise CheckpointError(f"official {class_name(node['_target_'])} config lacks its required option {name!r}")
    return opt.default


def check_options(node: dict[str, Any], where: str) -> None:
    """Refuse options the official class does not have, and values flexitok does not implement."""
    cls = class_name(node["_target_"])
    table = OFFICIAL_OPTIONS[cls]
    for name, value in node.items():
        if name in ("_target_", "_partial_"):
            continue
        if name not in table:
            raise CheckpointError(
                f"official {where} ({cls}) has an unknown option {name!r}: the official {cls} takes no such argument"
            )
        opt = table[name]
        if opt.allowed is None or "<int>" in opt.allowed and isinstance(value, int):
            continue
        if isinstance(value, dict) and "_target_" in value or value not in opt.allowed:
            raise CheckpointError(f"official {where} option {name}={value!r} is not supported: {opt.why}")


# Combinations refused by flexitok.io.official.config_from_official beyond single option values (for the docs).
STRUCTURAL_REFUSALS: list[tuple[str, str]] = [
    ("`PatchEmbedder(flatten_patches=True)` in the decoder", "the official ToPatchesLinearHead cannot un-patchify a "
     "flat patch sequence: the official decoder fails"),
    ("`flatten_patches=True` with a 2-D sincos table (also when `flatten_patches` is absent: its default is True)",
     "the official forward adds a cropped [rows, cols] table to a flat sequence: it fails or broadcasts nonsense"),
    ("`posemb_scaling='interpolate'` or `posemb_type='sincos'` on a 1-D table (the decoder's register table, or a "
     "flat encoder)", "bilinear interpolation and the sincos table need 2-D: the official code fails"),
    ("`adaLN_expansion` other than 1 with `per_subseq_embs=False` or 2 with `True`", "the official adaLN layers fail"),
    ("a decoder register table shorter than the register count", "the official code fails"),
    ("`use_mup_readout=True` without `mup_base_width=`", "the head divides by dim / base width, and the base width is "
     "not in the checkpoint (the official code needs mup.set_base_shapes from its training script)"),
    ("a module graph wired differently from FlexTok's (data-dict keys), or modules of an unknown class",
     "a different model than FlexTok; refused rather than silently computing something else"),
]  # fmt: skip

_STATUS_TEXT = {
    "supported": "supported",
    "wiring": "supported (data-dict key; wiring checked)",
    "no-effect": "supported (no effect on results)",
    "training": "accepted (training only)",
}


def _fmt(value: Any) -> str:
    return "-" if value is REQUIRED else f"`{value!r}`"


def options_markdown() -> str:
    """The option table of docs/official-checkpoints.md (one row per official constructor argument)."""
    rows = ["| class | option | official default | flexitok |", "|---|---|---|---|"]
    for cls, table in OFFICIAL_OPTIONS.items():
        if not table:
            rows.append(f"| `{cls}` | (no arguments) | | supported |")
        for name, opt in table.items():
            text = _STATUS_TEXT[opt.status]
            if opt.note:
                text += f": {opt.note}"
            if opt.why:
                text += "; other values: refused (see below)"
            rows.append(f"| `{cls}` | `{name}` | {_fmt(opt.default)} | {text} |")
    return "\n".join(rows) + "\n"


def refused_markdown() -> str:
    """Every refusal, with its reason (docs/official-checkpoints.md)."""
    lines = []
    for cls, table in OFFICIAL_OPTIONS.items():
        for name, opt in table.items():
            if opt.why:
                values = (
                    "any other value"
                    if not opt.allowed
                    else "values other than " + ", ".join(_fmt(a) for a in opt.allowed)
                )
                lines.append(f"* `{cls}.{name}`, {values}: {opt.why}.")
    lines += [f"* {what}: {why}." for what, why in STRUCTURAL_REFUSALS]
    lines.append("* an option the official class does not have: the official code could not build the model either.")
    return "\n".join(lines) + "\n"
