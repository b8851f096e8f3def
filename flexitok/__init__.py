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
from flexitok.models.generator import Generator, GeneratorConfig
from flexitok.pipelines import GenerationOutput, GenerationPipeline
from flexitok.sampling.ar import ARSamplingConfig
from flexitok.sampling.decode import DecodeConfig

__version__ = "0.1.0"
__all__ = [
    "ARSamplingConfig",
    "CheckpointError",
    "DecodeConfig",
    "DecoderConfig",
    "EncoderConfig",
    "FlexTok",
    "FlexTokConfig",
    "FlexiTokError",
    "GenerationOutput",
    "GenerationPipeline",
    "Generator",
    "GeneratorConfig",
    "InvalidInputError",
    "TransformerConfig",
    "VAEConfig",
    "preset",
    "tiny_config",
]
