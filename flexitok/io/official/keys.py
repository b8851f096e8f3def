"""State-dict key renames between the official layout and flexitok's."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from flexitok.errors import CheckpointError
from flexitok.io.official.metadata import _modules, _role
from flexitok.io.official.options import option


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
