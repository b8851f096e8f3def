"""Pipelines: the end-to-end paths built from the models (generation: condition -> tokens -> images)."""

from flexitok.pipelines.conditions import dataset_inputs, parse_classes, placeholder_condition
from flexitok.pipelines.generation import (
    DEFAULT_TOKENIZER,
    NOISE_SEED_OFFSET,
    GenerationOutput,
    GenerationPipeline,
    check_pair,
)

__all__ = [
    "DEFAULT_TOKENIZER",
    "NOISE_SEED_OFFSET",
    "GenerationOutput",
    "GenerationPipeline",
    "check_pair",
    "dataset_inputs",
    "parse_classes",
    "placeholder_condition",
]
