"""The generator's conditioning: old saved generators (0.1.0 names and layout) still load and sample the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flexitok.models.conditioning import ClassLabels, TextFeatures, Unconditional
from flexitok.models.generator import Generator
from flexitok.sampling.ar import ARSamplingConfig, generate

FIXTURE = Path(__file__).parent / "fixtures" / "v0.1.0-generator"


def _condition(kind: str) -> ClassLabels | TextFeatures | Unconditional:
    if kind == "class":
        return ClassLabels(torch.tensor([0, 2]))
    if kind == "text":
        mask = torch.tensor([[1, 1, 0], [1, 1, 1]]).bool()
        return TextFeatures(torch.linspace(-1, 1, 2 * 3 * 8).view(2, 3, 8), mask)
    return Unconditional(2)


@pytest.mark.parametrize("kind", ["class", "text", "none"])
def test_0_1_0_generators_load_and_sample_as_they_did(kind: str) -> None:
    expected = json.loads((FIXTURE / "expected.json").read_text())[kind]
    gen = Generator.from_pretrained(FIXTURE / kind)
    rows = [torch.Generator().manual_seed(i) for i in range(2)]
    tokens = generate(gen, ARSamplingConfig(guidance_scale=2.0), _condition(kind), generator=rows)
    assert tokens.tolist() == expected["tokens"]
