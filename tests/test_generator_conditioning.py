"""The generator's conditioning: old saved generators (0.1.0 names and layout) still load and sample the same."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from flexitok.errors import InvalidInputError
from flexitok.models.conditioning import (
    EMBEDDERS,
    LEGACY_PARAMETER_NAMES,
    ClassLabels,
    ConditionEmbedder,
    TextFeatures,
    Unconditional,
)
from flexitok.models.generator import Generator, GeneratorConfig
from flexitok.pipelines import parse_classes
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


def _tiny(kind: str, **kw: object) -> Generator:
    torch.manual_seed(0)
    base: dict[str, object] = dict(vocab_size=16, n_tokens=6, dim=16, depth=1, n_heads=2, mlp_multiple_of=8)
    base.update(condition=kind, num_classes=3, text_dim=8, text_max_len=4)
    base.update(kw)
    return Generator(GeneratorConfig(**base))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["class", "text", "none"])
def test_the_embedder_owns_the_condition_parameters(kind: str) -> None:
    gen = _tiny(kind)
    emb = gen.conditioning
    assert isinstance(emb, ConditionEmbedder) and type(emb) is EMBEDDERS[kind]
    # Every condition parameter lives in the embedder; the generator holds none of its own.
    assert not list(gen.named_parameters(recurse=False))
    own = {f"conditioning.{k}" for k in emb.state_dict()}
    assert own and own == {k for k in gen.state_dict() if k.startswith("conditioning.")}
    # The 0.1.0 names map onto exactly these.
    old = json.loads((FIXTURE / "expected.json").read_text())[kind]["keys"]
    assert sorted(Generator.upgrade_state_dict(dict.fromkeys(old))) == sorted(gen.state_dict())


@pytest.mark.parametrize("kind", ["class", "text", "none"])
def test_load_state_dict_takes_old_names_also_inside_a_wrapper(kind: str) -> None:
    """Training checkpoints hold plain state dicts (possibly of a module wrapping the generator)."""
    src, dst = _tiny(kind), _tiny(kind, init_std=0.3)
    legacy = {v: k for k, v in LEGACY_PARAMETER_NAMES.items()}
    old = {legacy.get(k, k): v for k, v in src.state_dict().items()}
    assert set(old) != set(src.state_dict())
    dst.load_state_dict(old)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    wrapper = torch.nn.ModuleDict({"model": _tiny(kind, init_std=0.3)})
    wrapper.load_state_dict({f"model.{k}": v for k, v in old.items()})
    for k, v in src.conditioning.state_dict().items():
        assert torch.equal(wrapper["model"].conditioning.state_dict()[k], v), k


def test_conditioning_and_the_sampler_import_nothing_above_them() -> None:
    """No import of the generator from its conditioning, none of models/ from sampling (TYPE_CHECKING included)."""
    package = Path(__file__).resolve().parent.parent / "flexitok"

    def imported(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        return names

    assert not {n for n in imported(package / "models" / "conditioning.py") if n.startswith("flexitok.models")}
    assert not {n for n in imported(package / "sampling" / "ar.py") if n.startswith("flexitok.models")}


def test_class_names_and_ids_from_user_text() -> None:
    names = [f"c{i}" for i in range(12)]
    gen = _tiny("class", num_classes=12, class_names=tuple(names))
    assert parse_classes("C3, 4,c11", gen.conditioning) == [3, 4, 11]
    with pytest.raises(InvalidInputError, match=r"class 12 is outside .*ids 0\.\.11 or names \(c0, c1, .*c7, \.\.\.\)"):
        parse_classes("12", gen.conditioning)
    with pytest.raises(InvalidInputError, match=r"unknown class 'nope'"):
        parse_classes("nope", gen.conditioning)
    with pytest.raises(InvalidInputError, match=r"class -1 is outside .*"):
        parse_classes("-1", gen.conditioning)
    with pytest.raises(InvalidInputError, match=r"class ids are 0\.\.2"):
        parse_classes("5", _tiny("class").conditioning)
    with pytest.raises(InvalidInputError, match="unconditional"):
        parse_classes("1", _tiny("none").conditioning)
    # A GeneratorConfig with names refuses a count that disagrees with num_classes.
    with pytest.raises(ValueError, match="2 class names for num_classes=3"):
        GeneratorConfig(num_classes=3, class_names=("a", "b"))
