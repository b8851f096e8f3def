"""The FlexTok rectified-flow decoder: [noised latent patches | registers] -> velocity."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flexitok.config import DecoderConfig
from flexitok.models.encoder import readout_width_mult
from flexitok.nn.blocks import AdaLNBlock, Transformer
from flexitok.nn.embeddings import PatchEmbed, PositionEmbedding, TimestepEmbedder, unpatchify
from flexitok.nn.masks import block_mask
from flexitok.nn.norm import Fp32LayerNorm, modulate
from flexitok.nn.precision import precision_override


def _zero_linear(layer: nn.Module) -> None:
    assert isinstance(layer, nn.Linear)
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:  # official proj_bias / adaLN_bias may be off
        nn.init.zeros_(layer.bias)


class PatchHead(nn.Module):
    """adaLN-modulated LayerNorm + linear map from patch tokens to latent patches.

    ``width_mult`` != 1 is the official muP readout: the modulated input is divided by it before the linear map.
    ``norm``, ``bias``, ``adaln_bias`` and ``dtype`` are the official ``norm_layer`` (present or None),
    ``proj_bias``, ``adaLN_bias`` and ``dtype_override``.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        eps: float,
        width_mult: float = 1.0,
        norm: bool = True,
        bias: bool = True,
        adaln_bias: bool = True,
        dtype: str | None = None,
    ) -> None:
        super().__init__()
        self.norm: nn.Module = Fp32LayerNorm(eps) if norm else nn.Identity()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=adaln_bias))
        self.proj = nn.Linear(dim, out_dim, bias=bias)
        self.width_mult = width_mult
        self.dtype = dtype

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``x [B, P, D]``, ``c [B, D]`` -> ``[B, P, out_dim]``."""
        with precision_override(x.device.type, self.dtype):
            shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)
            x = modulate(self.norm(x), shift, scale)
            return self.proj(x / self.width_mult if self.width_mult != 1.0 else x)


class FlexTokDecoder(nn.Module):
    """Velocity model ``v(x_t, t, cond)`` for rectified flow.

    ``cond [B, N, D]`` is built from FSQ codes by :meth:`condition` (linear map, learned register position
    embedding, mask token for positions >= keep_k) or is the null condition for classifier-free guidance.
    """

    def __init__(
        self, cfg: DecoderConfig, latent_channels: int, latent_size: tuple[int, int], fsq_dim: int, n_registers: int
    ) -> None:
        super().__init__()
        self.cfg = cfg
        tcfg = cfg.transformer
        d = tcfg.dim
        self.latent_channels = latent_channels
        self.grid = (latent_size[0] // cfg.patch_size[0], latent_size[1] // cfg.patch_size[1])
        self.n_registers = n_registers
        self.from_codes = nn.Linear(fsq_dim, d, bias=cfg.from_codes_bias)
        # May be longer than n_registers (official max_sizes); only the first n_registers rows are used.
        self.register_posemb = nn.Parameter(torch.randn(cfg.register_posemb_len or n_registers, d) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(d) * 0.02)
        if cfg.learned_null_cond:
            self.null_cond = nn.Parameter(torch.randn(d) * 0.02)
        else:
            # Not persistent: official ZeroNullCond checkpoints store no tensor for it.
            self.register_buffer("null_cond", torch.zeros(d), persistent=False)
        self.patch_embed = PatchEmbed(latent_channels, d if cfg.patch_proj else None, cfg.patch_size)
        self.posemb = PositionEmbedding(d, cfg.posemb_grid or self.grid, cfg.posemb_type, cfg.posemb_scaling)
        self.time_embed = TimestepEmbedder(d, cfg.time_freq_dim, cfg.max_timestep)
        self.trunk = Transformer(tcfg, adaln_groups=cfg.adaln_expansion)
        out_dim = cfg.patch_size[0] * cfg.patch_size[1] * latent_channels
        self.head = PatchHead(
            d,
            out_dim,
            tcfg.norm_eps,
            readout_width_mult(d, cfg.mup_base_width),
            norm=cfg.head_norm,
            bias=cfg.head_bias,
            adaln_bias=cfg.head_adaln_bias,
            dtype=cfg.head_dtype,
        )
        self.init_weights()

    def init_weights(self) -> None:
        # adaLN-zero: every residual branch and the output head start as the identity / zero.
        for blk in self.trunk.blocks:
            assert isinstance(blk, AdaLNBlock)
            _zero_linear(blk.adaLN_modulation[-1])
        _zero_linear(self.head.adaLN_modulation[-1])
        _zero_linear(self.head.proj)

    def condition(self, codes: Tensor, keep_k: Tensor) -> Tensor:
        """FSQ codes ``[B, N, d]`` and ``keep_k [B]`` -> register conditioning ``[B, N, D]``.

        Positions ``>= keep_k`` are replaced by the learned mask token (nested dropout at inference).
        """
        codes = codes.to(self.from_codes.weight.dtype)  # FSQ codes are float32; the model may be cast
        with precision_override(codes.device.type, self.cfg.from_codes_dtype):
            x = self.from_codes(codes)
        x = x + self.register_posemb[: codes.shape[1]].to(x.dtype)
        if not self.cfg.mask_truncated:  # official eval_keep_k_read_key=None: no mask tokens at inference
            return x
        keep = torch.arange(x.shape[1], device=x.device)[None, :] < keep_k.to(x.device)[:, None]
        return torch.where(keep[..., None], x, self.mask_token.to(x.dtype))

    def null_condition(self, batch_size: int) -> Tensor:
        """The unconditional register input ``[B, N, D]`` for classifier-free guidance (``[B, 1, D]`` with the
        official ``replace_with_single_token``)."""
        return self.null_cond.expand(batch_size, 1 if self.cfg.null_single_token else self.n_registers, -1)

    def forward(
        self, x_t: Tensor, t: Tensor, cond: Tensor, return_features_at: int | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``x_t [B, C, h, w]``, ``t [B]``, ``cond [B, N, D]`` -> velocity ``[B, C, h, w]``.

        With ``return_features_at=i`` also returns the patch tokens after block i, ``[B, P, D]`` (REPA).
        """
        patches = self.posemb(self.patch_embed(x_t)).flatten(1, 2)  # [B, P, D]
        p = patches.shape[1]
        temb = self.time_embed(t)
        x = torch.cat([patches, cond.to(patches.dtype)], dim=1)
        mask = block_mask(self.cfg.mask_mode, p, cond.shape[1], device=x.device)  # None (full) by default
        x, feats = self.trunk(x, mask, c=temb, split=p, return_features_at=return_features_at)
        v = unpatchify(
            self.head(x[:, :p], temb),
            self.cfg.patch_size,
            (x_t.shape[2] // self.cfg.patch_size[0], x_t.shape[3] // self.cfg.patch_size[1]),
        )
        if return_features_at is not None:
            if feats is None:
                raise ValueError(
                    f"return_features_at={return_features_at} but the decoder has {len(self.trunk.blocks)} blocks"
                )
            return v, feats[:, :p]
        return v
