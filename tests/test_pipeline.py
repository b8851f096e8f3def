"""GenerationPipeline and the conditioning objects: pairing checks, per-row seeding, one path for every caller,
and the Python example of docs/generation.md against `flexitok generate`."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexitok import ARSamplingConfig, DecodeConfig, GenerationPipeline, Generator
from flexitok.cli.main import main
from flexitok.errors import InvalidInputError
from flexitok.models.conditioning import ClassLabels, TextFeatures, Unconditional
from flexitok.models.generator import generator_preset
from flexitok.pipelines import parse_classes, placeholder_condition
from tests.conftest import tiny_model

DOC = Path(__file__).resolve().parent.parent / "docs" / "generation.md"
pytestmark = pytest.mark.usefixtures("one_thread")  # small models: threads only contend on a shared CPU


def _generator(tokenizer, condition: str = "class", **kw) -> Generator:
    torch.manual_seed(1)
    cfg = generator_preset(
        "tiny",
        vocab_size=tokenizer.vocab_size,
        n_tokens=tokenizer.n_registers,
        condition=condition,
        num_classes=3,
        class_names=("a", "b", "c") if condition == "class" else None,
        text_dim=6,
        **kw,
    )
    return Generator(cfg).eval()


@pytest.fixture(scope="module")
def pipe() -> GenerationPipeline:
    tok = tiny_model()
    return GenerationPipeline(_generator(tok), tok)


FAST = DecodeConfig(steps=2, guidance_scale=2.0, seed=5)


def test_pairing_is_checked(tmp_path: Path) -> None:
    tok = tiny_model()
    gen = _generator(tok)
    torch.manual_seed(0)
    other = Generator(generator_preset("tiny", vocab_size=tok.vocab_size + 1, n_tokens=4, num_classes=3)).eval()
    with pytest.raises(InvalidInputError, match="vocab_size"):
        GenerationPipeline(other, tok)
    longer = Generator(generator_preset("tiny", vocab_size=tok.vocab_size, n_tokens=tok.n_registers + 1)).eval()
    with pytest.raises(InvalidInputError, match="makes up to"):
        GenerationPipeline(longer, tok)
    gen.save_pretrained(tmp_path / "gen")
    other.save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "tok")
    loaded = GenerationPipeline.from_pretrained(tmp_path / "gen", tmp_path / "tok")
    assert loaded.generator.config == gen.config
    with pytest.raises(InvalidInputError, match="vocab_size"):
        GenerationPipeline.from_pretrained(tmp_path / "other", tmp_path / "tok")


def test_rows_are_seeded_per_row_not_per_batch(pipe: GenerationPipeline) -> None:
    sampling = ARSamplingConfig(guidance_scale=2.0)
    whole = pipe(labels=[0, 1, 2, 1], n_tokens=5, sampling=sampling, decode=FAST)
    assert whole.images.shape == (4, 3, 32, 32) and whole.tokens.shape == (4, 5)
    assert float(whole.images.abs().max()) <= 1.0
    batched = pipe(labels=[0, 1, 2, 1], n_tokens=5, sampling=sampling, decode=FAST, batch_size=3)
    # Same tokens and noise; the decoder's float sums may differ in the last bits between batch shapes.
    assert torch.equal(whole.tokens, batched.tokens)
    torch.testing.assert_close(whole.images, batched.images, atol=1e-5, rtol=0)
    # Row i of a call is a one-row call with seed + i.
    alone = pipe(labels=[2], n_tokens=5, sampling=sampling, decode=DecodeConfig(steps=2, guidance_scale=2.0, seed=7))
    assert torch.equal(alone.tokens[0], whole.tokens[2])
    torch.testing.assert_close(alone.images[0], whole.images[2], atol=1e-5, rtol=0)
    # The number of tokens: n_tokens=, else sampling.n_tokens, else all the generator's.
    assert pipe(labels=[0], sampling=ARSamplingConfig(n_tokens=3), decode=FAST).tokens.shape == (1, 3)
    assert pipe(labels=[0], decode=FAST).tokens.shape == (1, 16)
    other_seed = pipe(labels=[0, 1, 2, 1], n_tokens=5, sampling=sampling, decode=DecodeConfig(steps=2, seed=6))
    assert not torch.equal(other_seed.images, whole.images)


def test_bad_requests_are_refused(pipe: GenerationPipeline) -> None:
    with pytest.raises(InvalidInputError, match="class-conditioned: pass class labels"):
        pipe(prompts=["a shoe"], decode=FAST)
    with pytest.raises(InvalidInputError, match="class-conditioned"):
        pipe(num_samples=2, decode=FAST)
    with pytest.raises(InvalidInputError, match=r"class 3 is not a class id in 0\.\.2"):
        pipe(labels=[3], decode=FAST)
    with pytest.raises(InvalidInputError, match=r"1\.\.16"):
        pipe(labels=[0], n_tokens=17, decode=FAST)
    with pytest.raises(InvalidInputError, match="2 conditions for 3 samples"):
        pipe(labels=[0, 1], num_samples=3, decode=FAST)
    with pytest.raises(InvalidInputError, match="batch_size"):
        pipe(labels=[0], batch_size=0, decode=FAST)


def test_each_conditioning_reads_its_own_inputs() -> None:
    tok = tiny_model()
    cls, txt, none = (_generator(tok, c) for c in ("class", "text", "none"))
    assert parse_classes("B, 2,a", cls.conditioning) == [1, 2, 0]
    with pytest.raises(InvalidInputError, match=r"unknown class 'x'.*ids 0\.\.2 or names \(a, b, c\)"):
        parse_classes("x", cls.conditioning)
    with pytest.raises(InvalidInputError, match="text-conditioned: pass prompts"):
        parse_classes("1", txt.conditioning)
    assert isinstance(cls.conditioning.from_batch({"label": [0, 2]}), ClassLabels)
    with pytest.raises(InvalidInputError, match="captions"):
        txt.conditioning.from_batch({"tokens": torch.zeros(2, 4)})
    assert none.conditioning.from_batch({"tokens": torch.zeros(2, 4)}) == Unconditional(2)
    # Prefix lengths and null prefixes per kind; an unconditional generator has nothing to guide.
    for gen, prefix_len in ((cls, 1), (txt, gen_text_len(txt)), (none, 1)):
        cond = placeholder_condition(gen.conditioning, 2)
        emb, valid = gen.prefix(cond)
        assert emb.shape == (2, prefix_len, gen.config.dim) and valid.shape == (2, prefix_len)
    assert none.null_prefix(2) is None and cls.null_prefix(2) is not None and txt.null_prefix(2) is not None
    with pytest.raises(InvalidInputError, match="unconditional"):
        none.prefix(ClassLabels(torch.tensor([0])))
    with pytest.raises(InvalidInputError, match="text-conditioned"):
        txt.prefix(ClassLabels(torch.tensor([0])))
    # A text pipeline encodes prompts with its text encoder, batch by batch.
    calls: list[list[str]] = []

    def encoder(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(prompts)
        g = torch.Generator().manual_seed(len(prompts[0]))
        return torch.randn(len(prompts), 3, 6, generator=g), torch.ones(len(prompts), 3, dtype=torch.bool)

    out = GenerationPipeline(txt, tok, text_encoder=encoder)(prompts=["a", "bb", "ccc"], batch_size=2, decode=FAST)
    assert out.images.shape[0] == 3 and calls == [["a", "bb"], ["ccc"]]
    assert isinstance(txt.conditioning.from_inputs(prompts=["a"], text_encoder=encoder), TextFeatures)
    assert GenerationPipeline(none, tok)(num_samples=2, n_tokens=3, decode=FAST).tokens.shape == (2, 3)


def gen_text_len(gen: Generator) -> int:
    return gen.config.text_max_len + 1


def _doc_example() -> tuple[str, list[str]]:
    text = DOC.read_text()
    section = text[text.index("## Python API: `GenerationPipeline`") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    cli = re.search(r"```bash\n(flexitok generate .*?)\n```", section, re.S)
    assert code and cli, "docs/generation.md lost its Python example or its CLI twin"
    return code.group(1), shlex.split(cli.group(1))[1:]


def test_docs_python_example_matches_flexitok_generate(tmp_path: Path) -> None:
    code, argv = _doc_example()
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    images = namespace["images"]
    assert images.shape == (3, 3, 32, 32) and namespace["tokens"].shape == (3, 16)
    folder = tmp_path / "samples"
    argv[argv.index("-o") + 1] = str(folder)
    assert main([*argv, "--device", "cpu"]) == 0
    from flexitok.io.images import tensor_to_pil

    for i, image in enumerate(images):
        cli = np.asarray(Image.open(folder / f"sample_{i:04d}.png").convert("RGB"))
        assert np.array_equal(cli, np.asarray(tensor_to_pil(image))), f"sample {i} differs"
