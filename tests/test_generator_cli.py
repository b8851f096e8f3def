"""End to end on a tiny random tokenizer: pretokenize -> train generator -> generate / bench / eval."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from flexitok import DecodeConfig, GenerationPipeline
from flexitok.cli.main import main
from flexitok.codec.token_files import read_token_file
from flexitok.config import tiny_config
from flexitok.data.tokens import TokenShardDataset
from flexitok.eval.generation import GenerationEvalConfig, evaluate_generation
from flexitok.models.classifier import ClassifierConfig, SmallCNN
from flexitok.models.flextok import FlexTok
from flexitok.models.generator import Generator
from flexitok.train.classifier import ClassifierTask, ClassifierTaskConfig
from flexitok.train.trainer import train
from flexitok.train.trainer_config import TrainerConfig


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    cfg = tiny_config(image_size=16, n_registers=8, dim=32, depth=1)
    cfg.fsq_levels = (5, 5, 4)  # 100 codes
    FlexTok(cfg).save_pretrained(root / "tok")
    assert (
        main(
            ["pretokenize", "--model", str(root / "tok"), "--data", "fashion_mnist", "--limit", "48"]
            + ["--batch-size", "16", "-o", str(root / "shards"), "--device", "cpu"]
        )
        == 0
    )
    config = root / "gen.yaml"
    config.write_text(
        f"model: {{preset: tiny, condition: class}}\n"
        f"data: {{path: {root / 'shards'}}}\n"
        f"train: {{out_dir: {root / 'run'}, steps: 4, batch_size: 8, lr: 1.0e-3, log_every: 2, ckpt_every: 4, "
        f"progress: false}}\n"
    )
    assert main(["train", "generator", "--config", str(config)]) == 0
    return root


def test_pretokenize_writes_tokens_labels_and_meta(workdir: Path) -> None:
    ds = TokenShardDataset(workdir / "shards")
    assert len(ds) == 48
    item = ds[0]
    assert item["tokens"].shape == (8,) and 0 <= int(item["tokens"].max()) < 100
    assert 0 <= item["label"] < 10 and isinstance(item["caption"], str)
    assert ds.meta["vocab_size"] == 100 and ds.meta["n_tokens"] == 8 and len(ds.meta["class_names"]) == 10
    tok = FlexTok.from_pretrained(workdir / "tok")
    from flexitok.data import DataConfig, build_dataset

    image = build_dataset(DataConfig(kind="fashion_mnist", image_size=16, limit=1))[0]["image"]
    assert torch.equal(tok.tokenize(image[None])[0], item["tokens"])


def test_trained_generator_matches_the_tokenizer(workdir: Path) -> None:
    gen = Generator.from_pretrained(workdir / "run" / "generator")
    assert gen.vocab_size == 100 and gen.config.n_tokens == 8 and gen.config.num_classes == 10
    assert gen.config.class_names is not None and gen.config.class_names[7] == "Sneaker"


def test_generate_cli_writes_a_grid_and_tokens(workdir: Path) -> None:
    out, tokens = workdir / "grid.png", workdir / "tokens.json"
    args = ["generate", "--generator", str(workdir / "run" / "generator"), "--tokenizer", str(workdir / "tok")]
    args += ["--class", "sneaker,3", "--tokens", "4", "-n", "4", "-o", str(out), "--steps", "2", "--no-apg"]
    assert main([*args, "--save-tokens", str(tokens), "--device", "cpu"]) == 0
    with Image.open(out) as im:
        assert im.width > 2 * 16 and im.height > 2 * 16
    t = torch.stack(read_token_file(tokens).tokens)
    assert t.shape == (4, 4) and int(t.max()) < 100
    # same seed, no KV cache -> same tokens
    assert main([*args, "--save-tokens", str(workdir / "t2.npy"), "--no-cache", "--device", "cpu"]) == 0
    assert torch.equal(torch.stack(read_token_file(workdir / "t2.npy").tokens), t)


def test_generate_cli_rejects_bad_requests(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["generate", "--generator", str(workdir / "run" / "generator"), "--tokenizer", str(workdir / "tok")]
    assert main([*base, "--class", "11", "-o", str(workdir / "x.png")]) == 2
    assert "class 11 is outside this generator's classes: classes are ids 0..9" in capsys.readouterr().err
    assert main([*base, "--class", "1", "--tokens", "9", "-o", str(workdir / "x.png")]) == 2
    assert "1..8" in capsys.readouterr().err
    assert main([*base, "--prompt", "a sneaker", "-o", str(workdir / "x.png")]) == 2
    assert "class-conditioned" in capsys.readouterr().err
    assert not (workdir / "x.png").exists()


def test_bench_generator_reports_both_paths(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = workdir / "bench.json"
    args = ["bench", "generator", "--generator", str(workdir / "run" / "generator"), "--batch-size", "2"]
    assert main([*args, "--repeats", "1", "--warmup", "0", "--json", str(report), "--device", "cpu"]) == 0
    data = json.loads(report.read_text())
    assert data["cached_tokens_per_s"] > 0 and data["uncached_tokens_per_s"] > 0
    assert data["cached_equals_uncached"] is True
    assert "kv-cache" in capsys.readouterr().out


class _MeanColour(torch.nn.Module):
    """A cheap stand-in feature extractor: per-channel means and stds, [B, 6]."""

    metric_name = "FD-test"
    dim = 6

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], dim=1)


def test_evaluate_generation_rows_and_classifier(workdir: Path) -> None:
    gen = Generator.from_pretrained(workdir / "run" / "generator")
    tok = FlexTok.from_pretrained(workdir / "tok")
    extractor = _MeanColour()
    ref = extractor(torch.rand(32, 3, 16, 16) * 2 - 1)
    clf = SmallCNN(ClassifierConfig(image_size=16, num_classes=10, width=8))
    decode = DecodeConfig(steps=1)
    cfg = GenerationEvalConfig(token_counts=(1, 8), cfg_scales=(1.0, 2.0), n_samples=6, batch_size=4, decode=decode)
    rows = evaluate_generation(GenerationPipeline(gen, tok), extractor, ref, cfg, classifier=clf, progress=False)
    assert [(r["tokens"], r["cfg_scale"]) for r in rows] == [(1, 1.0), (1, 2.0), (8, 1.0), (8, 2.0)]
    assert all(r["FD-test"] >= 0 and 0 <= r["accuracy"] <= 1 for r in rows)


def test_classifier_trains_saves_and_loads(tmp_path: Path) -> None:
    # two easily separable classes: dark vs bright images
    images = torch.cat([torch.full((16, 3, 8, 8), -0.8), torch.full((16, 3, 8, 8), 0.8)])
    images = images + 0.1 * torch.randn_like(images)
    labels = torch.tensor([0] * 16 + [1] * 16)
    data = [{"image": images[i], "label": int(labels[i])} for i in range(32)]
    cfg = ClassifierConfig(image_size=8, num_classes=2, width=8, class_names=("dark", "bright"))
    # trained by the common trainer (flexitok.train.classifier), exported as a model folder
    torch.manual_seed(0)
    model = SmallCNN(cfg)
    task = ClassifierTask(model, ClassifierTaskConfig(export_to=str(tmp_path / "clf")), test=(images, labels))
    run = TrainerConfig(out_dir=str(tmp_path / "run"), steps=15, batch_size=16, lr=3e-3, betas=(0.9, 0.999))
    train(task, data, dataclasses.replace(run, grad_clip=0.0, progress=False, ckpt_every=15, precision="fp32"))
    assert (model.eval().predict(images) == labels).float().mean() > 0.9
    loaded = SmallCNN.from_pretrained(tmp_path / "clf")
    assert loaded.config == cfg
    torch.testing.assert_close(loaded(images[:4]), model(images[:4]))
