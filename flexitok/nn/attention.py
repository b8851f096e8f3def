"""Multi-head self-attention with QK-norm on top of ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from flexitok.config import TransformerConfig
from flexitok.nn.norm import Fp32LayerNorm


class SelfAttention(nn.Module):
    """Bias-free multi-head self-attention.

    q and k are layer-normalised per head (no affine) when ``qk_norm`` is set; the logit scale comes from the
    config (``8 / head_dim`` for official-compatible models). The mask is an explicit boolean tensor,
    True = may attend, broadcastable to ``[B, H, S, S]``; no sequence padding is needed.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.scale = cfg.attn_scale
        self.wq = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.q_norm: nn.Module = Fp32LayerNorm(cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm: nn.Module = Fp32LayerNorm(cfg.norm_eps) if cfg.qk_norm else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x [B, S, D]``, ``mask [S, S]`` or ``[B, 1, S, S]`` bool -> ``[B, S, D]``."""
        q, k, v = (rearrange(w(x), "b s (h d) -> b h s d", h=self.num_heads) for w in (self.wq, self.wk, self.wv))
        q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj(rearrange(out, "b h s d -> b s (h d)"))
