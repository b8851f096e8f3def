"""Transformer blocks: plain pre-norm (encoder) and adaLN-zero (decoder)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from flexitok.config import TransformerConfig
from flexitok.nn.attention import SelfAttention
from flexitok.nn.fastpath import eager_inference
from flexitok.nn.mlp import GatedMLP
from flexitok.nn.norm import Fp32LayerNorm, gated_residual_, modulate, modulate_groups_


def _residual(x: Tensor, y: Tensor) -> Tensor:
    """``x + y``; in eager inference written into ``y``, a fresh branch output (``x`` is never modified)."""
    return y.add_(x) if eager_inference() else x + y


class Block(nn.Module):
    """Pre-norm block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm1 = Fp32LayerNorm(cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        self.norm2 = Fp32LayerNorm(cfg.norm_eps)
        self.mlp = GatedMLP(cfg.dim, cfg.hidden)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x [B, S, D]`` -> ``[B, S, D]``."""
        x = _residual(x, self.attn(self.norm1(x), mask))
        return _residual(x, self.mlp(self.norm2(x)))


class AdaLNBlock(nn.Module):
    """Pre-norm block with adaLN-zero modulation from a conditioning vector.

    The modulation layer maps ``silu(c)`` to ``groups x 6 x D`` values. With ``groups=2`` the sequence is split
    at ``split`` (the number of leading tokens, e.g. image patches) and each part gets its own
    (gate_attn, gate_mlp, shift_attn, scale_attn, shift_mlp, scale_mlp).

    Eager inference applies them per token range by broadcasting, in place and never expanded to ``[B, S, D]``;
    with autograd (training) or under ``torch.compile`` the plain per-token formulation runs, so training
    numerics do not depend on the inference fast path.
    """

    def __init__(self, cfg: TransformerConfig, groups: int = 1) -> None:
        super().__init__()
        self.groups = groups
        self.norm1 = Fp32LayerNorm(cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        self.norm2 = Fp32LayerNorm(cfg.norm_eps)
        self.mlp = GatedMLP(cfg.dim, cfg.hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, groups * 6 * cfg.dim))

    def modulation(self, c: Tensor) -> Tensor:
        """``c [B, D]`` -> ``[B, groups, 6, D]``; along dim 2: gate_attn, gate_mlp, shift_attn, scale_attn,
        shift_mlp, scale_mlp."""
        return self.adaLN_modulation(c).unflatten(-1, (self.groups, 6, -1))

    def _per_token(self, c: Tensor, seq_len: int, split: int) -> tuple[Tensor, ...]:
        # [B, groups*6*D] -> six [B, S, D] (or [B, 1, D] when shared) tensors.
        mod = self.adaLN_modulation(c)
        if self.groups == 1:
            return tuple(m.unsqueeze(1) for m in mod.chunk(6, dim=-1))
        first, second = mod.chunk(2, dim=-1)
        n_second = seq_len - split
        out = []
        for a, b in zip(first.chunk(6, dim=-1), second.chunk(6, dim=-1), strict=True):
            out.append(torch.cat([a.unsqueeze(1).expand(-1, split, -1), b.unsqueeze(1).expand(-1, n_second, -1)], 1))
        return tuple(out)

    def forward(self, x: Tensor, c: Tensor, split: int, mask: Tensor | None = None) -> Tensor:
        """``x [B, S, D]``, ``c [B, D]``, ``split`` = number of tokens in the first group -> ``[B, S, D]``."""
        if eager_inference():
            gate_attn, gate_mlp, shift_attn, scale_attn, shift_mlp, scale_mlp = self.modulation(c).unbind(2)
            h = modulate_groups_(self.norm1(x), shift_attn, scale_attn, split)
            x = gated_residual_(x, self.attn(h, mask), gate_attn, split)
            h = modulate_groups_(self.norm2(x), shift_mlp, scale_mlp, split)
            return gated_residual_(x, self.mlp(h), gate_mlp, split)
        gate_attn, gate_mlp, shift_attn, scale_attn, shift_mlp, scale_mlp = self._per_token(c, x.shape[1], split)
        x = x + gate_attn * self.attn(modulate(self.norm1(x), shift_attn, scale_attn), mask)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class Transformer(nn.Module):
    """A stack of :class:`Block` or :class:`AdaLNBlock` with optional activation checkpointing."""

    def __init__(self, cfg: TransformerConfig, adaln_groups: int = 0) -> None:
        super().__init__()
        self.adaln = adaln_groups > 0
        blocks = [AdaLNBlock(cfg, adaln_groups) if self.adaln else Block(cfg) for _ in range(cfg.depth)]
        self.blocks = nn.ModuleList(blocks)
        self.activation_checkpointing = False

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        c: Tensor | None = None,
        split: int = 0,
        return_features_at: int | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``x [B, S, D]`` -> (``[B, S, D]``, the hidden state after block ``return_features_at`` or None)."""
        feats = None
        for i, blk in enumerate(self.blocks):
            args = (x, c, split, mask) if self.adaln else (x, mask)
            if self.activation_checkpointing and self.training:
                x = checkpoint(blk, *args, use_reentrant=False)
            else:
                x = blk(*args)
            if return_features_at == i:
                feats = x
        return x, feats
