"""flexitok: FlexTok image tokenization in PyTorch."""

import flexitok.io.pretrained  # noqa: E402, F401  (registers the official checkpoint format with FlexTok)
from flexitok.config import (
    DecoderConfig,
    EncoderConfig,
    FlexTokConfig,
    TransformerConfig,
    VAEConfig,
    preset,
    tiny_config,
)
from flexitok.errors import CheckpointError, FlexiTokError, InvalidInputError
from flexitok.models.flextok import FlexTok

__version__ = "0.1.0"
__all__ = [
    "CheckpointError",
    "DecoderConfig",
    "EncoderConfig",
    "FlexTok",
    "FlexTokConfig",
    "FlexiTokError",
    "InvalidInputError",
    "TransformerConfig",
    "VAEConfig",
    "preset",
    "tiny_config",
]
