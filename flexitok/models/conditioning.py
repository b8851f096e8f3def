"""How an autoregressive generator is conditioned: class labels, text prompts or nothing, one class per kind.

A :class:`Conditioning` creates the generator's condition parameters, builds the prefix the transformer reads
before the tokens, the null prefix used for condition dropout and classifier-free guidance, and turns what a user
or a training batch gives (class ids or names, prompts, a number of samples) into a condition value:
:class:`ClassLabels`, :class:`TextFeatures` or :class:`Unconditional`. ``GeneratorConfig.condition`` names the
kind; :data:`CONDITIONINGS` maps it to the class, and nothing else switches on it.

The parameters stay on the generator under their 0.1.0 names (``class_emb``, ``text_proj``, ``null_text``,
``sos``) so saved generators and checkpoints keep loading; the conditioning object is the only code that reads
them.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flexitok.errors import InvalidInputError

if TYPE_CHECKING:
    from flexitok.models.generator import Generator, GeneratorConfig

TextEncoderFn = Any  # a callable prompts -> (features [B, L, D], mask [B, L]), e.g. models.text_encoder.TextEncoder


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


def _known_labels(labels: Tensor | None, n: int) -> Tensor | None:
    """The first n labels when all n are known (>= 0), else None."""
    if labels is None or len(labels) < n or not bool((labels[:n] >= 0).all()):
        return None
    return labels[:n]


def _device(gen: Generator) -> torch.device:
    return gen.tok_emb.weight.device


# ---------------------------------------------------------------------------------------------- the kinds
class Conditioning:
    """One kind of condition. Subclasses set :attr:`kind` and implement the hooks below."""

    kind: ClassVar[str]
    condition_type: ClassVar[type]
    #: for messages: "this generator is <described>: pass <expects>"
    described: ClassVar[str]
    expects: ClassVar[str]
    #: whether prompts must be encoded by a text encoder first (``from_inputs`` / ``from_batch`` need one)
    needs_text_encoder: ClassVar[bool] = False

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config

    @staticmethod
    def prefix_len(config: GeneratorConfig) -> int:
        """Positions the prefix takes in the sequence."""
        raise NotImplementedError

    @staticmethod
    def parameter_estimate(config: GeneratorConfig) -> int:
        """Roughly how many numbers its condition parameters hold (``Generator.estimate_state_size``)."""
        return 0

    def add_parameters(self, gen: Generator) -> None:
        """Create the condition parameters on ``gen`` (its state dict names them)."""

    def reset_parameters(self, gen: Generator, std: float) -> None:
        """Initialise the plain parameters (``nn.Linear`` / ``nn.Embedding`` weights are done by the generator)."""

    def wrong_input(self) -> InvalidInputError:
        return InvalidInputError(f"this generator is {self.described}: pass {self.expects}")

    def check(self, condition: Condition) -> None:
        if not isinstance(condition, self.condition_type):
            raise self.wrong_input()

    @property
    def class_names(self) -> list[str]:
        """The names of the classes it takes (none unless class-conditioned)."""
        return []

    def parse_labels(self, text: str) -> list[int]:
        """``"3,7"`` or ``"sneaker,bag"`` -> class ids; only a class-conditioned generator takes them."""
        raise self.wrong_input()

    def prefix(self, gen: Generator, condition: Condition, null: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Prefix embeddings ``[B, P, D]`` and their validity ``[B, P]`` bool; ``null [B]`` bool replaces a row's
        condition by the null condition (condition dropout)."""
        raise NotImplementedError

    def null_prefix(self, gen: Generator, batch_size: int) -> tuple[Tensor, Tensor] | None:
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

    def dataset_inputs(
        self, n: int, labels: Tensor | None = None, captions: Sequence[str] | None = None
    ) -> tuple[dict[str, Any], Tensor | None]:
        """For ``n`` samples prompted like a dataset with these ``labels`` and ``captions`` (either may be
        missing): the keyword inputs of :meth:`from_inputs`, and the class each sample should show (None when
        unknown), for the generation evaluation."""
        return {"num_samples": n}, None

    def placeholder(self, batch_size: int) -> Condition:
        """A stand-in condition of the right shape (benchmarks of random-weight generators)."""
        raise NotImplementedError


class ClassConditioning(Conditioning):
    """``class_tokens`` learned embeddings per class; row ``num_classes`` is the null class."""

    kind = "class"
    condition_type = ClassLabels
    described, expects = "class-conditioned", "class labels"

    @staticmethod
    def prefix_len(config: GeneratorConfig) -> int:
        return config.class_tokens

    @staticmethod
    def parameter_estimate(config: GeneratorConfig) -> int:
        return (config.num_classes + 1) * config.class_tokens * config.dim

    def add_parameters(self, gen: Generator) -> None:
        c = self.config
        # One extra row: the null class used for label dropout and CFG.
        gen.class_emb = nn.Embedding(c.num_classes + 1, c.class_tokens * c.dim)

    @property
    def class_names(self) -> list[str]:
        c = self.config
        return list(c.class_names) if c.class_names else [str(i) for i in range(c.num_classes)]

    def prefix(self, gen: Generator, condition: Condition, null: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check(condition)
        assert isinstance(condition, ClassLabels)
        c, dev = self.config, _device(gen)
        labels = torch.as_tensor(condition.ids, device=dev).long().view(-1)
        if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) > c.num_classes):
            raise InvalidInputError(
                f"class labels must lie in [0, {c.num_classes}) (or -1 for the null class); got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        idx = torch.where(labels < 0, torch.full_like(labels, c.num_classes), labels)
        if null is not None:
            idx = torch.where(null.to(dev), torch.full_like(idx, c.num_classes), idx)
        emb = gen.class_emb(idx).view(idx.shape[0], c.class_tokens, c.dim)
        return emb, torch.ones(emb.shape[:2], dtype=torch.bool, device=dev)

    def null_prefix(self, gen: Generator, batch_size: int) -> tuple[Tensor, Tensor]:
        return self.prefix(gen, ClassLabels(torch.full((batch_size,), -1, dtype=torch.long, device=_device(gen))))

    def parse_labels(self, text: str) -> list[int]:
        """``"3"`` / ``"3,7"`` / ``"sneaker,bag"`` -> class ids (names matched case-insensitively)."""
        c = self.config
        names = {n.lower(): i for i, n in enumerate(c.class_names or ())}
        ids = []
        for part in (s.strip() for s in text.split(",") if s.strip()):
            if part.lstrip("-").isdigit():
                i = int(part)
            elif part.lower() in names:
                i = names[part.lower()]
            else:
                known = f"; known names: {', '.join(c.class_names)}" if c.class_names else ""
                raise InvalidInputError(f"unknown class {part!r}{known}")
            if not 0 <= i < c.num_classes:
                raise InvalidInputError(f"class {i} is outside 0..{c.num_classes - 1}")
            ids.append(i)
        if not ids:
            raise InvalidInputError("give at least one class (an id or a name)")
        return ids

    def from_inputs(self, labels=None, prompts=None, num_samples=None, text_encoder=None) -> Condition:
        if labels is None or prompts is not None:
            raise self.wrong_input()
        if not isinstance(labels, Tensor):
            n = self.config.num_classes
            for v in labels:  # before as_tensor: 2.7 would become 2, and 2**70 would overflow
                if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= int(v) < n:
                    raise InvalidInputError(f"class {str(v)[:30]} is not a class id in 0..{n - 1}")
        elif labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise InvalidInputError(f"class ids must be integers, got dtype {labels.dtype}")
        ids = torch.as_tensor(labels, dtype=torch.long).view(-1)
        if ids.numel() == 0:
            raise InvalidInputError("give at least one class")
        bad = [int(i) for i in ids if not 0 <= int(i) < self.config.num_classes]
        if bad:
            raise InvalidInputError(f"class {bad[0]} is outside 0..{self.config.num_classes - 1}")
        return ClassLabels(ids)

    def from_batch(self, batch: dict[str, Any], text_encoder: TextEncoderFn | None = None) -> Condition:
        return ClassLabels(torch.as_tensor(batch["label"]))

    def dataset_inputs(self, n, labels=None, captions=None) -> tuple[dict[str, Any], Tensor | None]:
        # The dataset's own labels when it has them (so an FD compares like with like), else a balanced cycle.
        ids = _known_labels(labels, n)
        ids = ids if ids is not None else torch.arange(n) % self.config.num_classes
        return {"labels": ids}, ids

    def placeholder(self, batch_size: int) -> Condition:
        return ClassLabels(torch.arange(batch_size) % self.config.num_classes)


class _StartToken(Conditioning):
    """Shared by the kinds whose prefix ends in a learned start token."""

    def add_parameters(self, gen: Generator) -> None:
        gen.sos = nn.Parameter(torch.zeros(1, self.config.dim))

    def reset_parameters(self, gen: Generator, std: float) -> None:
        nn.init.normal_(gen.sos, std=std)


class TextConditioning(_StartToken):
    """Projected text-encoder features padded to ``text_max_len`` (padding masked out), then a start token; the
    null prompt is one learned embedding."""

    kind = "text"
    condition_type = TextFeatures
    described, expects = "text-conditioned", "prompts"
    needs_text_encoder = True

    @staticmethod
    def prefix_len(config: GeneratorConfig) -> int:
        return config.text_max_len + 1

    @staticmethod
    def parameter_estimate(config: GeneratorConfig) -> int:
        return config.text_dim * config.dim + 2 * config.dim

    def add_parameters(self, gen: Generator) -> None:
        c = self.config
        gen.text_proj = nn.Linear(c.text_dim, c.dim, bias=False)
        gen.null_text = nn.Parameter(torch.zeros(1, c.dim))
        super().add_parameters(gen)

    def reset_parameters(self, gen: Generator, std: float) -> None:
        nn.init.normal_(gen.null_text, std=std)
        super().reset_parameters(gen, std)

    def prefix(self, gen: Generator, condition: Condition, null: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check(condition)
        assert isinstance(condition, TextFeatures)
        c, dev = self.config, _device(gen)
        text_features, text_mask = condition.features, condition.mask
        if text_features.dim() != 3 or text_features.shape[-1] != c.text_dim:
            raise InvalidInputError(
                f"text features must have shape [B, L, {c.text_dim}], got {tuple(text_features.shape)}"
            )
        b, n = text_features.shape[:2]
        mask = torch.ones(b, n, dtype=torch.bool) if text_mask is None else text_mask.bool()
        feats, mask = text_features.to(dev)[:, : c.text_max_len], mask.to(dev)[:, : c.text_max_len]
        pad = c.text_max_len - feats.shape[1]
        emb = gen.text_proj(feats.to(gen.text_proj.weight.dtype))
        emb = F.pad(emb, (0, 0, 0, pad))
        mask = F.pad(mask, (0, pad), value=False)
        if null is not None:
            null = null.to(dev)
            null_emb = F.pad(gen.null_text[None].expand(b, -1, -1), (0, 0, 0, c.text_max_len - 1))
            null_mask = torch.zeros_like(mask)
            null_mask[:, 0] = True
            emb = torch.where(null[:, None, None], null_emb, emb)
            mask = torch.where(null[:, None], null_mask, mask)
        emb = torch.cat([emb, gen.sos[None].expand(b, -1, -1)], dim=1)
        mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.bool, device=dev)], dim=1)
        return emb, mask

    def null_prefix(self, gen: Generator, batch_size: int) -> tuple[Tensor, Tensor]:
        dev = _device(gen)
        feats = torch.zeros(batch_size, 1, self.config.text_dim, device=dev)
        return self.prefix(gen, TextFeatures(feats), null=torch.ones(batch_size, dtype=torch.bool, device=dev))

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

    def dataset_inputs(self, n, labels=None, captions=None) -> tuple[dict[str, Any], Tensor | None]:
        if not captions:
            raise InvalidInputError("a text-conditioned generator needs prompts: the dataset has no captions")
        # Captions describe their image's class: the samples should show it.
        return {"prompts": [captions[i % len(captions)] for i in range(n)]}, _known_labels(labels, n)

    def placeholder(self, batch_size: int) -> Condition:
        return TextFeatures(torch.randn(batch_size, 8, self.config.text_dim))

    def from_batch(self, batch: dict[str, Any], text_encoder: TextEncoderFn | None = None) -> Condition:
        if "caption" not in batch:
            raise InvalidInputError("text-conditioned training needs captions in the token shards")
        return self._encode(batch["caption"], text_encoder)


class NoConditioning(_StartToken):
    """One learned start token; nothing to guide."""

    kind = "none"
    condition_type = Unconditional
    described, expects = "unconditional", "a number of samples (no class labels or prompts)"

    @staticmethod
    def prefix_len(config: GeneratorConfig) -> int:
        return 1

    def prefix(self, gen: Generator, condition: Condition, null: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check(condition)
        n = condition.rows
        emb = gen.sos[None].expand(n, -1, -1)
        return emb, torch.ones(n, 1, dtype=torch.bool, device=_device(gen))

    def null_prefix(self, gen: Generator, batch_size: int) -> None:
        return None

    def from_inputs(self, labels=None, prompts=None, num_samples=None, text_encoder=None) -> Condition:
        if labels is not None or prompts is not None or num_samples is None or num_samples < 1:
            raise self.wrong_input()
        return Unconditional(num_samples)

    def from_batch(self, batch: dict[str, Any], text_encoder: TextEncoderFn | None = None) -> Condition:
        return Unconditional(int(batch["tokens"].shape[0]))

    def placeholder(self, batch_size: int) -> Condition:
        return Unconditional(batch_size)


#: ``GeneratorConfig.condition`` -> its conditioning class
CONDITIONINGS: dict[str, type[Conditioning]] = {
    c.kind: c for c in (ClassConditioning, TextConditioning, NoConditioning)
}


def conditioning_class(kind: str) -> type[Conditioning]:
    if kind not in CONDITIONINGS:
        raise ValueError(f"unknown condition {kind!r}; expected one of {', '.join(repr(k) for k in CONDITIONINGS)}")
    return CONDITIONINGS[kind]
