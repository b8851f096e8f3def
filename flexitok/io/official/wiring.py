"""Checks that the official module graph is wired like FlexTok (which data-dict key each module reads)."""

from __future__ import annotations

from typing import Any

from flexitok.errors import CheckpointError
from flexitok.io.official.metadata import _modules, _role
from flexitok.io.official.options import class_name, option

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
