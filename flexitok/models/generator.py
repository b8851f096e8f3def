"""LlamaGen-style autoregressive transformer over FlexTok token ids.

Decoder-only: pre-norm blocks with RMSNorm, SwiGLU MLPs, 1D rotary position embeddings and no biases. The
sequence is ``[prefix | t_0 .. t_{K-1}]``; the prefix carries the condition, built by the generator's condition
embedder (:mod:`flexitok.models.conditioning`; ``config.condition``: ``"class"``, ``"text"`` or ``"none"``), a
submodule that owns the condition parameters.

The output at the last prefix position predicts ``t_0``; the output at ``t_j`` predicts ``t_{j+1}``. Incremental
decoding uses :class:`KVCache` (pre-allocated keys/values and a key-validity mask per layer).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flexitok.errors import InvalidInputError
from flexitok.models.conditioning import (
    EMBEDDERS,
    LEGACY_PARAMETER_NAMES,
    Condition,
    ConditionEmbedder,
    build_embedder,
    embedder_class,
)
from flexitok.models.text_encoder import DEFAULT_TEXT_ENCODER
from flexitok.nn.mlp import GatedMLP
from flexitok.nn.norm import RMSNorm
from flexitok.nn.rope import apply_rope, rope_tables
from flexitok.utils.persistence import PretrainedModel

ConditionKind = Literal["class", "text", "none"]
V = TypeVar("V")

# Name of the bundled default generator (resolved under flexitok/assets/generators/<name>).
DEFAULT_GENERATOR = "default"


@dataclass
class GeneratorConfig:
    """Hyper-parameters of :class:`Generator`.

    ``n_tokens`` is the longest token sequence (the tokenizer's register count); ``vocab_size`` must equal the
    tokenizer's FSQ codebook size. ``mlp_hidden`` defaults to LlamaGen's ``8/3 * dim`` rounded up to a multiple of
    ``mlp_multiple_of``.
    """

    vocab_size: int = 64000
    n_tokens: int = 256
    dim: int = 768
    depth: int = 12
    n_heads: int = 12
    mlp_hidden: int | None = None
    mlp_multiple_of: int = 256
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    dropout: float = 0.0
    condition: ConditionKind = "class"
    num_classes: int = 1000
    class_tokens: int = 1
    class_names: tuple[str, ...] | None = None
    text_encoder: str = DEFAULT_TEXT_ENCODER
    text_dim: int = 384
    text_max_len: int = 32
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.condition not in EMBEDDERS:
            embedder_class(self.condition)  # raises ValueError naming the known kinds
        if self.dim % self.n_heads != 0:
            raise ValueError(f"dim={self.dim} is not a multiple of n_heads={self.n_heads}")
        if (self.dim // self.n_heads) % 2 != 0:
            raise ValueError("head dim must be even for rotary embeddings")
        if self.vocab_size < 2 or self.n_tokens < 1 or self.depth < 1:
            raise ValueError("vocab_size >= 2, n_tokens >= 1 and depth >= 1 are required")
        if self.class_names is not None:
            self.class_names = tuple(self.class_names)
            if len(self.class_names) != self.num_classes:
                raise ValueError(f"{len(self.class_names)} class names for num_classes={self.num_classes}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        m = self.mlp_multiple_of
        return m * math.ceil(int(8 * self.dim / 3) / m)

    @property
    def prefix_len(self) -> int:
        return embedder_class(self.condition).prefix_len_of(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# LlamaGen GPT sizes (depth, width, heads); "tiny"/"small" are for tests and CPU runs.
_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 64, 2),
    "small": (6, 256, 4),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (36, 1280, 20),
    "XXL": (48, 1536, 24),
}
GENERATOR_PRESETS: tuple[str, ...] = tuple(_SIZES)


def generator_preset(name: str, **overrides: Any) -> GeneratorConfig:
    """A :class:`GeneratorConfig` for a named size (``tiny``, ``small``, ``B``, ``L``, ``XL``, ``XXL``)."""
    if name not in _SIZES:
        raise InvalidInputError(f"unknown generator preset {name!r}; choose one of {list(_SIZES)}")
    depth, dim, heads = _SIZES[name]
    base: dict[str, Any] = {"depth": depth, "dim": dim, "n_heads": heads}
    if name in ("tiny", "small"):
        base["mlp_multiple_of"] = 64
    base.update(overrides)
    return GeneratorConfig(**base)


class KVCache:
    """Pre-allocated per-layer keys/values [B, H, S, hd] plus the key-validity mask [B, S] for incremental decoding."""

    def __init__(
        self,
        depth: int,
        batch_size: int,
        n_heads: int,
        max_len: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (batch_size, n_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(depth)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(depth)]
        self.key_valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.max_len = max_len


class Attention(nn.Module):
    """Multi-head causal self-attention with rotary embeddings and an optional KV cache."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.dropout = cfg.dropout

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, cache: KVCache | None, layer: int, start: int
    ) -> Tensor:
        """x [B, T, D], mask [B, 1, T, S] bool (True = attend), S = start + T -> [B, T, D]."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            cache.k[layer][:, :, start : start + t] = k
            cache.v[layer][:, :, start : start + t] = v
            k, v = cache.k[layer][:, :, : start + t], cache.v[layer][:, :, : start + t]
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


def _mlp(dim: int, hidden: int) -> GatedMLP:
    """A :class:`GatedMLP` with its layers in the order of the generator's former own SwiGLU (gate ``fc1``, up
    ``fc3``, down ``fc2``): parameter order decides a seeded init and the float sum of the gradient norm, so a
    training run reproduces its numbers bit for bit."""
    mlp = GatedMLP(dim, hidden)
    mlp._modules["fc2"] = mlp._modules.pop("fc2")
    return mlp


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = _mlp(cfg.dim, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, cache: KVCache | None, layer: int, start: int
    ) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), cos, sin, mask, cache, layer, start))
        return x + self.drop(self.mlp(self.norm2(x)))


class Generator(PretrainedModel):
    """Autoregressive token generator. See the module docstring for the sequence layout.

    ``save_pretrained`` / ``from_pretrained`` come from :class:`flexitok.utils.persistence.PretrainedModel`;
    bundled generators live in ``flexitok/assets/generators/<name>`` (``"default"``, ``"default-text"``).
    """

    model_type = "generator"
    config_class = GeneratorConfig
    bundled_dir = "generators"

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.dim)
        # Built right after the token embedding, as the 0.1.0 parameters were: a seeded init draws the same numbers.
        self.conditioning: ConditionEmbedder = build_embedder(c)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.head = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
        self.conditioning.reset_parameters(std)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def prefix_len(self) -> int:
        return self.config.prefix_len

    # ---------------------------------------------------------------- validation
    def check_tokens(self, tokens: Tensor) -> None:
        """Raise :class:`InvalidInputError` unless ``tokens`` is an integer [B, K] tensor of ids in [0, vocab)."""
        if tokens.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
            raise InvalidInputError(f"token ids must be an integer tensor, got dtype {tokens.dtype}")
        if tokens.dim() != 2:
            raise InvalidInputError(f"token ids must have shape [B, K], got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.config.n_tokens:
            raise InvalidInputError(
                f"{tokens.shape[1]} tokens given; this generator handles at most {self.config.n_tokens}"
            )
        lo, hi = (int(tokens.min()), int(tokens.max())) if tokens.numel() else (0, 0)
        if lo < 0 or hi >= self.vocab_size:
            raise InvalidInputError(
                f"token ids must lie in [0, {self.vocab_size}); got values in [{lo}, {hi}]"
                " (does the generator's vocab_size match the tokenizer's codebook?)"
            )

    # ---------------------------------------------------------------- conditions
    def prefix(self, condition: Condition, null: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Condition prefix embeddings ``[B, P, D]`` and their validity ``[B, P]`` bool.

        ``condition``: :class:`~flexitok.models.conditioning.ClassLabels`, ``TextFeatures`` or ``Unconditional``
        (whichever this generator's conditioning reads). ``null``: BoolTensor ``[B]``; True replaces that row's
        condition by the null condition (condition dropout).
        """
        return self.conditioning(condition, null)

    def null_prefix(self, batch_size: int) -> tuple[Tensor, Tensor] | None:
        """The unconditional prefix for CFG (null class / null prompt), or None for an unconditional generator."""
        return self.conditioning.null_prefix(batch_size)

    # ---------------------------------------------------------------- trunk
    def new_cache(self, batch_size: int, max_tokens: int | None = None) -> KVCache:
        """A KV cache for ``prefix_len + max_tokens`` positions."""
        c = self.config
        n = c.n_tokens if max_tokens is None else max_tokens
        w = self.tok_emb.weight
        return KVCache(c.depth, batch_size, c.n_heads, c.prefix_len + n, c.head_dim, w.device, w.dtype)

    def trunk(self, x: Tensor, valid: Tensor, cache: KVCache | None = None, start: int = 0) -> Tensor:
        """Run the blocks over x [B, T, D] at positions start..start+T-1 (valid [B, T] bool) -> hidden [B, T, D].

        With a cache, earlier positions come from (and these positions are written to) the cache.
        """
        b, t, _ = x.shape
        dev = x.device
        if cache is not None:
            if start + t > cache.max_len:
                raise InvalidInputError(f"KV cache holds {cache.max_len} positions; asked for {start + t}")
            cache.key_valid[:, start : start + t] = valid
            key_valid = cache.key_valid[:, : start + t]
        else:
            if start != 0:
                raise ValueError("start > 0 needs a KV cache")
            key_valid = valid
        q_pos = torch.arange(start, start + t, device=dev)
        k_pos = torch.arange(start + t, device=dev)
        # Causal and key-valid; every query also sees itself so padded rows never have an empty (NaN) softmax.
        is_self = (k_pos[None, :] == q_pos[:, None])[None, None]
        causal = (k_pos[None, :] <= q_pos[:, None])[None, None]
        mask = causal & (key_valid[:, None, None, :] | is_self)
        cos, sin = rope_tables(q_pos, self.config.head_dim, self.config.rope_theta)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, mask, cache, i, start)
        return self.norm(x)

    def forward(self, tokens: Tensor, prefix: Tensor, prefix_valid: Tensor) -> Tensor:
        """Next-token logits for a full (uncached) sequence.

        tokens [B, K] (K may be 0), prefix [B, P, D], prefix_valid [B, P] -> logits [B, K + 1, V]; row j predicts
        token j.
        """
        self.check_tokens(tokens)
        x = torch.cat([prefix, self.tok_emb(tokens)], dim=1)
        valid = torch.cat([prefix_valid, torch.ones_like(tokens, dtype=torch.bool)], dim=1)
        h = self.trunk(x, valid)
        return self.head(h[:, prefix.shape[1] - 1 :])

    def step(self, tokens: Tensor, cache: KVCache, start: int) -> Tensor:
        """Cached decoding step: tokens [B, T] at sequence positions start.. -> logits [B, T, V]."""
        x = self.tok_emb(tokens)
        return self.head(self.trunk(x, torch.ones_like(tokens, dtype=torch.bool), cache, start))

    def prefill(self, prefix: Tensor, prefix_valid: Tensor, cache: KVCache) -> Tensor:
        """Write the prefix into the cache; returns the logits for token 0, [B, V]."""
        return self.head(self.trunk(prefix, prefix_valid, cache, 0)[:, -1])

    # ---------------------------------------------------------------- persistence
    @classmethod
    def estimate_state_size(cls, config: GeneratorConfig) -> int:
        c, d = config, config.dim
        size = 2 * c.vocab_size * d + c.depth * (4 * d * d + 3 * d * c.hidden + 2 * d) + d
        return size + embedder_class(c.condition).parameter_estimate(c)

    @classmethod
    def upgrade_config_json(cls, blob: dict[str, Any]) -> dict[str, Any]:
        if blob.get("kind") == "flexitok-generator" and "format" not in blob:
            # flexitok 0.1.0 wrote the config fields flat, tagged with "kind".
            config = {k: v for k, v in blob.items() if k != "kind"}
            return {"format": "flexitok", "version": 1, "model": "generator", "config": config}
        return super().upgrade_config_json(blob)

    @classmethod
    def upgrade_state_dict(cls, state: Mapping[str, V]) -> dict[str, V]:
        # Before the condition embedders owned their parameters they sat on the generator (class_emb, sos, ...);
        # before the blocks came from flexitok.nn, the MLP was the generator's own (w_gate, w_up, w_down).
        return {_MLP_NAMES.sub(_new_mlp_name, LEGACY_PARAMETER_NAMES.get(k, k)): v for k, v in state.items()}


_MLP_NAMES = re.compile(r"^(blocks\.\d+\.mlp\.)(w_gate|w_up|w_down)(\.weight)$")
_MLP_RENAMES = {"w_gate": "fc1", "w_up": "fc3", "w_down": "fc2"}


def _new_mlp_name(match: re.Match[str]) -> str:
    return match.group(1) + _MLP_RENAMES[match.group(2)] + match.group(3)
