"""How an autoregressive generator is conditioned: class labels, text prompts or nothing.

Condition values (what a caller gives): :class:`ClassLabels`, :class:`TextFeatures`, :class:`Unconditional`.
Condition embedders (what the generator owns), one ``nn.Module`` per kind, each holding its own parameters and
building the prefix the transformer reads before the tokens (``[B, P, D]`` plus validity ``[B, P]``), the null
prefix used for condition dropout and classifier-free guidance, and the condition value for user inputs or a
training batch:

* :class:`ClassEmbedder` (``"class"``): a table of ``num_classes + 1`` rows of ``class_tokens * dim``; the last
  row is the null class.
* :class:`TextEmbedder` (``"text"``): a projection of text-encoder features padded to ``text_max_len``, one
  learned null-prompt embedding, then a start token.
* :class:`StartToken` (``"none"``): one learned start token; nothing to guide.

``GeneratorConfig.condition`` names the kind; :data:`EMBEDDERS` maps it to the class and
:func:`build_embedder` is the one place that reads it (``Generator.__init__`` calls it once). The embedders read
only the fields of :class:`EmbedderConfig`, so this module imports nothing from the generator.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flexitok.errors import InvalidInputError

#: prompts -> (features [B, L, D], mask [B, L] bool), e.g. :class:`flexitok.models.text_encoder.TextEncoder`
TextEncoderFn = Callable[[list[str]], tuple[Tensor, Tensor]]


class EmbedderConfig(Protocol):
    """The generator-config fields a condition embedder reads (``GeneratorConfig`` has them all)."""

    @property
    def condition(self) -> str: ...
    @property
    def dim(self) -> int: ...
    @property
    def num_classes(self) -> int: ...
    @property
    def class_tokens(self) -> int: ...
    @property
    def class_names(self) -> Sequence[str] | None: ...
    @property
    def text_dim(self) -> int: ...
    @property
    def text_max_len(self) -> int: ...


# ---------------------------------------------------------------------------------------------- condition values
@dataclass(frozen=True)
class ClassLabels:
    """Class ids ``LongTensor [B]`` in ``[0, num_classes)``; -1 selects the null class."""

    ids: Tensor

    @property
    def rows(self) -> int:
        return int(self.ids.shape[0])

    def select(self, start: int, end: int) -> ClassLabels:
        return ClassLabels(self.ids[start:end])


@dataclass(frozen=True)
class TextFeatures:
    """Text-encoder features ``[B, L, text_dim]`` and their mask ``[B, L]`` bool (True = real token)."""

    features: Tensor
    mask: Tensor | None = None

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])

    def select(self, start: int, end: int) -> TextFeatures:
        mask = None if self.mask is None else self.mask[start:end]
        return TextFeatures(self.features[start:end], mask)


@dataclass(frozen=True)
class Unconditional:
    """``rows`` samples of an unconditional generator."""

    rows: int

    def select(self, start: int, end: int) -> Unconditional:
        return Unconditional(len(range(self.rows)[start:end]))


Condition = ClassLabels | TextFeatures | Unconditional


# ---------------------------------------------------------------------------------------------- the embedders
class ConditionEmbedder(nn.Module):
    """One kind of condition, with its parameters. Subclasses set the class variables and the hooks below."""

    kind: ClassVar[str]
    condition_type: ClassVar[type]
    #: for messages: "this generator is <described>: pass <expects>"
    described: ClassVar[str]
    expects: ClassVar[str]
    #: whether prompts must be encoded by a text encoder first (``from_inputs`` / ``from_batch`` need one)
    needs_text_encoder: ClassVar[bool] = False

    def __init__(self, config: EmbedderConfig) -> None:
        super().__init__()
        self.dim = config.dim
        self.prefix_len = self.prefix_len_of(config)

    @staticmethod
    def prefix_len_of(config: EmbedderConfig) -> int:
        """Positions the prefix takes in the sequence."""
        raise NotImplementedError

    @staticmethod
    def parameter_estimate(config: EmbedderConfig) -> int:
        """Roughly how many numbers its parameters hold (``Generator.estimate_state_size``)."""
        return 0

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def reset_parameters(self, std: float) -> None:
        """Initialise the plain parameters (``nn.Linear`` / ``nn.Embedding`` weights are done by the generator,
        in module order, so a seeded generator starts from the same numbers as before)."""

    def wrong_input(self) -> InvalidInputError:
        return InvalidInputError(f"this generator is {self.described}: pass {self.expects}")

    def check(self, condition: Condition) -> None:
        if not isinstance(condition, self.condition_type):
            raise self.wrong_input()

    @property
    def class_names(self) -> list[str]:
        """The names of the classes it takes (none unless class-conditioned)."""
        return []

    def forward(self, condition: Condition, null: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Prefix embeddings ``[B, P, D]`` and their validity ``[B, P]`` bool; ``null [B]`` bool replaces a row's
        condition by the null condition (condition dropout)."""
        raise NotImplementedError

    def null_prefix(self, batch_size: int) -> tuple[Tensor, Tensor] | None:
        """The unconditional prefix for classifier-free guidance, or None when there is nothing to guide."""
        raise NotImplementedError

    def from_inputs(
        self,
        labels: Sequence[int] | Tensor | None = None,
        prompts: Sequence[str] | None = None,
        num_samples: int | None = None,
        text_encoder: TextEncoderFn | None = None,
    ) -> Condition:
        """User input -> a condition: class ids, prompts (encoded with ``text_encoder``) or a sample count."""
        raise NotImplementedError

    def from_batch(self, batch: dict[str, Any], text_encoder: TextEncoderFn | None = None) -> Condition:
        """A training batch (``{"tokens", "label", "caption"}``) -> its condition."""
        raise NotImplementedError


class ClassEmbedder(ConditionEmbedder):
    """``class_tokens`` learned embeddings per class; row ``num_classes`` is the null class (label dropout, CFG)."""

    kind = "class"
    condition_type: ClassVar[type] = ClassLabels
    described, expects = "class-conditioned", "class labels"

    def __init__(self, config: EmbedderConfig) -> None:
        super().__init__(config)
        self.num_classes, self.class_tokens = config.num_classes, config.class_tokens
        self.names = list(config.class_names) if config.class_names else None
        self.table = nn.Embedding(config.num_classes + 1, config.class_tokens * config.dim)

    @staticmethod
    def prefix_len_of(config: EmbedderConfig) -> int:
        return config.class_tokens

    @staticmethod
    def parameter_estimate(config: EmbedderConfig) -> int:
        return (config.num_classes + 1) * config.class_tokens * config.dim

    @property
    def class_names(self) -> list[str]:
        return list(self.names) if self.names else [str(i) for i in range(self.num_classes)]

    def forward(self, condition: Condition, null: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check(condition)
        assert isinstance(condition, ClassLabels)
        dev, n = self.device, self.num_classes
        labels = torch.as_tensor(condition.ids, device=dev).long().view(-1)
        if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) > n):
            raise InvalidInputError(
                f"class labels must lie in [0, {n}) (or -1 for the null class); got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        idx = torch.where(labels < 0, torch.full_like(labels, n), labels)
        if null is not None:
            idx = torch.where(null.to(dev), torch.full_like(idx, n), idx)
        emb = self.table(idx).view(idx.shape[0], self.class_tokens, self.dim)
        return emb, torch.ones(emb.shape[:2], dtype=torch.bool, device=dev)

    def null_prefix(self, batch_size: int) -> tuple[Tensor, Tensor]:
        return self(ClassLabels(torch.full((batch_size,), -1, dtype=torch.long, device=self.device)))

    def from_inputs(self, labels=None, prompts=None, num_samples=None, text_encoder=None) -> Condition:
        if labels is None or prompts is not None:
            raise self.wrong_input()
        n = self.num_classes
        if not isinstance(labels, Tensor):
            for v in labels:  # before as_tensor: 2.7 would become 2, and 2**70 would overflow
                if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= int(v) < n:
                    raise InvalidInputError(f"class {str(v)[:30]} is not a class id in 0..{n - 1}")
        elif labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise InvalidInputError(f"class ids must be integers, got dtype {labels.dtype}")
        ids = torch.as_tensor(labels, dtype=torch.long).view(-1)
        if ids.numel() == 0:
            raise InvalidInputError("give at least one class")
        bad = [int(i) for i in ids if not 0 <= int(i) < n]
        if bad:
            raise InvalidInputError(f"class {bad[0]} is outside 0..{n - 1}")
        return ClassLabels(ids)

    def from_batch(self, batch: dict[str, Any], text_encoder: TextEncoderFn | None = None) -> Condition:
        return ClassLabels(torch.as_tensor(batch["label"]))


class StartToken(ConditionEmbedder):
    """One learned start token; nothing to guide (``"none"``). The text embedder ends its prefix with one too."""

    kind = "none"
    condition_type: ClassVar[type] = Unconditional
    described, expects = "unconditional", "a number of samples (no class labels or prompts)"

    def __init__(self, config: EmbedderConfig) -> None:
        super().__init__(config)
        self.sos = nn.Parameter(torch.zeros(1, config.dim))

    @staticmethod
    def prefix_len_of(config: EmbedderConfig) -> int:
        return 1

    @staticmethod
    def parameter_estimate(config: EmbedderConfig) -> int:
        return config.dim

    def reset_parameters(self, std: float) -> None:
        nn.init.normal_(self.sos, std=std)

    def start(self, batch_size: int) -> Tensor:
        """The start token for ``batch_size`` rows, ``[B, 1, D]``."""
        return self.sos[None].expand(batch_size, -1, -1)

    def forward(self, condition: Condition, null: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check(condition)
        n = condition.rows
        return self.start(n), torch.ones(n, 1, dtype=torch.bool, device=self.device)

    def null_prefix(self, batch_size: int) -> tuple[Tensor, Tensor] | None:
        return None

    def from_inputs(self, labels=None, prompts=None, num_samples=None, text_encoder=None) -> Condition:
        if labels is not None or prompts is not None or num_samples is None or num_samples < 1:
            raise self.wrong_input()
        return Unconditional(num_samples)

    def from_batch(self, batch: dict[str, Any], text_encoder: TextEncoderFn | None = None) -> Condition:
        return Unconditional(int(batch["tokens"].shape[0]))


class TextEmbedder(StartToken):
    """Projected text-encoder features padded to ``text_max_len`` (padding masked out), then a start token; the
    null prompt is one learned embedding."""

    kind = "text"
    condition_type: ClassVar[type] = TextFeatures
    described, expects = "text-conditioned", "prompts"
    needs_text_encoder = True

    def __init__(self, config: EmbedderConfig) -> None:
        nn.Module.__init__(self)
        self.dim, self.prefix_len = config.dim, self.prefix_len_of(config)
        self.text_dim, self.max_len = config.text_dim, config.text_max_len
        # Created in the 0.1.0 order (projection, null prompt, start token): a seeded init draws the same numbers.
        self.proj = nn.Linear(config.text_dim, config.dim, bias=False)
        self.null = nn.Parameter(torch.zeros(1, config.dim))
        self.sos = nn.Parameter(torch.zeros(1, config.dim))

    @staticmethod
    def prefix_len_of(config: EmbedderConfig) -> int:
        return config.text_max_len + 1

    @staticmethod
    def parameter_estimate(config: EmbedderConfig) -> int:
        return config.text_dim * config.dim + 2 * config.dim

    def reset_parameters(self, std: float) -> None:
        nn.init.normal_(self.null, std=std)
        super().reset_parameters(std)

    def forward(self, condition: Condition, null: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check(condition)
        assert isinstance(condition, TextFeatures)
        dev, length = self.device, self.max_len
        text_features, text_mask = condition.features, condition.mask
        if text_features.dim() != 3 or text_features.shape[-1] != self.text_dim:
            raise InvalidInputError(
                f"text features must have shape [B, L, {self.text_dim}], got {tuple(text_features.shape)}"
            )
        b, n = text_features.shape[:2]
        mask = torch.ones(b, n, dtype=torch.bool) if text_mask is None else text_mask.bool()
        feats, mask = text_features.to(dev)[:, :length], mask.to(dev)[:, :length]
        pad = length - feats.shape[1]
        emb = F.pad(self.proj(feats.to(self.proj.weight.dtype)), (0, 0, 0, pad))
        mask = F.pad(mask, (0, pad), value=False)
        if null is not None:
            null = null.to(dev)
            null_emb = F.pad(self.null[None].expand(b, -1, -1), (0, 0, 0, length - 1))
            null_mask = torch.zeros_like(mask)
            null_mask[:, 0] = True
            emb = torch.where(null[:, None, None], null_emb, emb)
            mask = torch.where(null[:, None], null_mask, mask)
        emb = torch.cat([emb, self.start(b)], dim=1)
        mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.bool, device=dev)], dim=1)
        return emb, mask

    def null_prefix(self, batch_size: int) -> tuple[Tensor, Tensor]:
        dev = self.device
        feats = torch.zeros(batch_size, 1, self.text_dim, device=dev)
        return self(TextFeatures(feats), null=torch.ones(batch_size, dtype=torch.bool, device=dev))

    def _encode(self, prompts: Sequence[str], text_encoder: TextEncoderFn | None) -> TextFeatures:
        if text_encoder is None:
            raise InvalidInputError("a text-conditioned generator needs a text encoder to read prompts")
        feats, mask = text_encoder(list(prompts))
        return TextFeatures(feats, mask)

    def from_inputs(self, labels=None, prompts=None, num_samples=None, text_encoder=None) -> Condition:
        if prompts is None or labels is not None:
            raise self.wrong_input()
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise InvalidInputError("prompts must be a non-empty list of non-empty strings")
        return self._encode(prompts, text_encoder)

    def from_batch(self, batch: dict[str, Any], text_encoder: TextEncoderFn | None = None) -> Condition:
        if "caption" not in batch:
            raise InvalidInputError("text-conditioned training needs captions in the token shards")
        return self._encode(batch["caption"], text_encoder)


#: ``GeneratorConfig.condition`` -> its embedder class
EMBEDDERS: dict[str, type[ConditionEmbedder]] = {c.kind: c for c in (ClassEmbedder, TextEmbedder, StartToken)}

#: state-dict names before the embedders owned their parameters (flexitok <= 0.2) -> names now
LEGACY_PARAMETER_NAMES: dict[str, str] = {
    "class_emb.weight": "conditioning.table.weight",
    "text_proj.weight": "conditioning.proj.weight",
    "null_text": "conditioning.null",
    "sos": "conditioning.sos",
}


def embedder_class(kind: str) -> type[ConditionEmbedder]:
    if kind not in EMBEDDERS:
        raise ValueError(f"unknown condition {kind!r}; expected one of {', '.join(repr(k) for k in EMBEDDERS)}")
    return EMBEDDERS[kind]


def build_embedder(config: EmbedderConfig) -> ConditionEmbedder:
    """The embedder of ``config.condition``, with fresh parameters."""
    return embedder_class(config.condition)(config)
