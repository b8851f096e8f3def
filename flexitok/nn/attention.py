"""Multi-head self-attention with QK-norm on top of ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from flexitok.config import TransformerConfig
from flexitok.nn.fastpath import eager_inference
from flexitok.nn.norm import Fp32LayerNorm
from flexitok.nn.packed import PackedLinearsMixin, packed_weight


class SelfAttention(PackedLinearsMixin):
    """Bias-free multi-head self-attention.

    q and k are layer-normalised per head (no affine) when ``qk_norm`` is set; the logit scale comes from the
    config (``8 / head_dim`` for official-compatible models). The mask is an explicit boolean tensor,
    True = may attend, broadcastable to ``[B, H, S, S]``; None (full attention) lets SDPA use its fastest kernel.

    ``wq``/``wk``/``wv`` are packed (:mod:`flexitok.nn.packed`): in eager inference they run as ONE QKV matmul
    and q/k/v stay strided views (no head-split copies). With autograd (training) or under ``torch.compile`` the
    computation is the plain one, so training numerics do not depend on the inference fast path.
    """

    _packed_groups = (("wq", "wk", "wv"),)

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.qk_norm = cfg.qk_norm
        self.eps = cfg.norm_eps
        self.scale = cfg.attn_scale
        self.wq = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.q_norm: nn.Module = Fp32LayerNorm(cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm: nn.Module = Fp32LayerNorm(cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self._pack_all()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x [B, S, D]``, ``mask [S, S]`` or ``[B, 1, S, S]`` bool -> ``[B, S, D]``."""
        if eager_inference():
            return self._forward_packed(x, mask)
        q, k, v = (rearrange(w(x), "b s (h d) -> b h s d", h=self.num_heads) for w in (self.wq, self.wk, self.wv))
        q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj(rearrange(out, "b h s d -> b s (h d)"))

    def _forward_packed(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, s, d = x.shape
        qkv = F.linear(x, packed_weight((self.wq, self.wk, self.wv))).view(b, s, 3, self.num_heads, self.head_dim)
        if self.qk_norm:
            # One float32 LayerNorm over q and k together (per head, no affine).
            qk = F.layer_norm(qkv[:, :, :2].float(), (self.head_dim,), eps=self.eps).to(x.dtype)
            q, k = qk[:, :, 0], qk[:, :, 1]
        else:
            q, k = qkv[:, :, 0], qkv[:, :, 1]
        # [B, S, H, hd] -> [B, H, S, hd] as strided views; SDPA's output then is [B, S, H, hd] in memory.
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), qkv[:, :, 2].transpose(1, 2), attn_mask=mask, scale=self.scale
        )
        return self.proj(out.transpose(1, 2).reshape(b, s, d))
