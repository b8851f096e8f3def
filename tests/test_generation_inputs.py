"""Generation inputs under the shared policy (flexitok.utils.limits): one prompt is one prompt, prompt and sample
counts are bounded the same for the API, the CLI and the demo, and `generate` writes images batch by batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import flexitok.pipelines.generation as generation
from flexitok import DecodeConfig, GenerationPipeline, Generator
from flexitok.cli.main import main
from flexitok.demo.generation import ARGeneratorBackend
from flexitok.errors import InvalidInputError
from flexitok.models.generator import generator_preset
from flexitok.utils.limits import MAX_GRID_SAMPLES, MAX_PROMPT_CHARS, MAX_SAMPLES_PER_CALL, MAX_SAMPLES_STREAMED
from tests.conftest import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = DecodeConfig(steps=2, guidance_scale=1.0, seed=3)


def _generator(tokenizer, condition: str = "class") -> Generator:
    torch.manual_seed(1)
    cfg = generator_preset(
        "tiny",
        vocab_size=tokenizer.vocab_size,
        n_tokens=tokenizer.n_registers,
        condition=condition,
        num_classes=3,
        class_names=("a", "b", "c") if condition == "class" else None,
        text_dim=6,
    )
    return Generator(cfg).eval()


class _Encoder:
    """A stand-in text encoder that records what it was asked to encode."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(list(prompts))
        feats = torch.stack([torch.full((3, 6), float(len(p))) for p in prompts])
        return feats, torch.ones(len(prompts), 3, dtype=torch.bool)


@pytest.fixture(scope="module")
def models():
    tok = tiny_model()
    return tok, _generator(tok), _generator(tok, "text")


def test_a_bare_string_is_one_prompt_and_an_int_one_label(models) -> None:
    tok, cls, txt = models
    enc = _Encoder()
    out = GenerationPipeline(txt, tok, text_encoder=enc)(prompts="abc", n_tokens=2, decode=FAST)
    assert out.tokens.shape == (1, 2) and enc.calls == [["abc"]]
    pipe = GenerationPipeline(cls, tok)
    assert torch.equal(pipe(labels=2, n_tokens=2, decode=FAST).tokens, pipe(labels=[2], n_tokens=2, decode=FAST).tokens)
    with pytest.raises(InvalidInputError, match="labels must be class ids"):
        pipe(labels="ab", decode=FAST)  # type: ignore[arg-type]


def test_prompt_and_sample_limits_are_refused_before_any_work(models, monkeypatch: pytest.MonkeyPatch) -> None:
    tok, cls, txt = models
    enc = _Encoder()
    text_pipe, class_pipe = GenerationPipeline(txt, tok, text_encoder=enc), GenerationPipeline(cls, tok)
    monkeypatch.setattr(generation, "generate", lambda *a, **k: pytest.fail("sampled despite a bad input"))
    with pytest.raises(InvalidInputError, match=f"prompt 1 is too long .*at most {MAX_PROMPT_CHARS}"):
        text_pipe(prompts=["ok", "x" * (MAX_PROMPT_CHARS + 1)], decode=FAST)
    for bad, message in (([""], "prompt 0 is empty"), (["a", 3], "prompt 1 must be a string"), ([], "at least one")):
        with pytest.raises(InvalidInputError, match=message):
            text_pipe(prompts=bad, decode=FAST)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=f"number of samples must be an integer in 1..{MAX_SAMPLES_PER_CALL}"):
        class_pipe(labels=[0] * (MAX_SAMPLES_PER_CALL + 1), decode=FAST)
    with pytest.raises(InvalidInputError, match=f"1..{MAX_SAMPLES_STREAMED}"):
        class_pipe.iter_batches(labels=torch.zeros(MAX_SAMPLES_STREAMED + 1, dtype=torch.long), decode=FAST)
    assert enc.calls == []


def test_iter_batches_yields_the_rows_of_one_call(models) -> None:
    tok, cls, _ = models
    pipe = GenerationPipeline(cls, tok)
    whole = pipe(labels=[0, 1, 2, 1, 0], n_tokens=3, decode=FAST)
    parts = list(pipe.iter_batches(labels=[0, 1, 2, 1, 0], n_tokens=3, decode=FAST, batch_size=2))
    assert [p.tokens.shape[0] for p in parts] == [2, 2, 1]
    assert torch.equal(torch.cat([p.tokens for p in parts]), whole.tokens)
    torch.testing.assert_close(torch.cat([p.images for p in parts]), whole.images, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def folders(models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok, cls, _ = models
    root = tmp_path_factory.mktemp("gen")
    tok.save_pretrained(root / "tok")
    cls.save_pretrained(root / "gen")
    return root


def test_generate_writes_each_batch_as_it_is_decoded(
    folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "samples"
    written_before_batch: list[int] = []
    real = generation.generate

    def spy(*args, **kwargs):
        written_before_batch.append(len(list(out.glob("*.png"))) if out.is_dir() else 0)
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "generate", spy)
    args = ["generate", "--generator", str(folders / "gen"), "--tokenizer", str(folders / "tok"), "--class", "b,0"]
    args += ["-n", "5", "--batch-size", "2", "--tokens", "2", "--steps", "2", "--device", "cpu", "-o", str(out)]
    assert main(args) == 0
    assert written_before_batch == [0, 2, 4]
    assert sorted(p.name for p in out.iterdir()) == [f"sample_{i:04d}.png" for i in range(5)]


def test_generate_bounds_n_and_prompts_before_loading_anything(
    folders: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = ["--generator", str(tmp_path / "nope"), "--tokenizer", str(tmp_path / "nope")]
    grid = ["-o", str(tmp_path / "g.png")]
    assert main(["generate", *missing, "-n", str(MAX_GRID_SAMPLES + 1), *grid]) == 2
    assert f"-n must be an integer in 1..{MAX_GRID_SAMPLES}" in capsys.readouterr().err
    assert main(["generate", *missing, "-n", str(MAX_SAMPLES_STREAMED + 1), "-o", str(tmp_path / "d")]) == 2
    assert f"-n must be an integer in 1..{MAX_SAMPLES_STREAMED}" in capsys.readouterr().err
    assert main(["generate", *missing, "--prompt", "y" * (MAX_PROMPT_CHARS + 1), *grid]) == 2
    assert "too long" in capsys.readouterr().err
    base = ["generate", "--generator", str(folders / "gen"), "--tokenizer", str(folders / "tok"), *grid]
    assert main([*base, "--class", "zebra"]) == 2
    assert "unknown class 'zebra': this generator's classes are ids 0..2 or names (a, b, c)" in capsys.readouterr().err
    assert main([*base, "--class", "3"]) == 2
    assert "class 3 is outside" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_demo_backend_checks_requests_by_the_same_policy(models) -> None:
    tok, cls, txt = models
    backend = ARGeneratorBackend(cls, tok, DecodeConfig(steps=2))
    assert backend.max_prompt_chars == MAX_PROMPT_CHARS
    backend.check_request(2, 1, None)
    with pytest.raises(InvalidInputError, match="class_index must be an integer in 0..2"):
        backend.check_request(2, 3, None)
    with pytest.raises(InvalidInputError, match="k must be an integer in 1.."):
        backend.check_request(0, 1, None)
    with pytest.raises(InvalidInputError, match="class-conditioned: pass class labels"):
        backend.check_request(2, None, "a prompt")
    text = ARGeneratorBackend(txt, tok, DecodeConfig(steps=2))
    with pytest.raises(InvalidInputError, match="too long"):
        text.check_request(2, None, "z" * (MAX_PROMPT_CHARS + 1))
    assert backend.generate(2, 0, 1, None).shape[0] == 3


def test_the_bundled_generator_takes_fashion_mnist_class_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flexitok.data.fashion_mnist import FASHION_MNIST_CLASSES

    assert list(Generator.read_config(Generator._resolve("default", None) / "config.json").class_names) == list(
        FASHION_MNIST_CLASSES
    )
    base = ["generate", "-n", "2", "--tokens", "2", "--steps", "2", "--device", "cpu", "--save-tokens"]
    assert main([*base, str(tmp_path / "a.json"), "--class", "sneaker", "-o", str(tmp_path / "a.png")]) == 0
    assert main([*base, str(tmp_path / "b.json"), "--class", "7", "-o", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()  # Sneaker is class 7
    capsys.readouterr()
    assert main(["generate", "--class", "10", "-o", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert "class 10 is outside this generator's classes: classes are ids 0..9 or names (T-shirt/top, Trouser" in err
