"""REPA target encoders: DINOv2 from a local folder or a (mocked) hub download, preprocessing, the projector size,
training through it, and the CLI run with a small random Dinov2Model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from flexitok.config import tiny_config
from flexitok.errors import FeatureExtractorError, InvalidInputError
from flexitok.eval.features import IMAGENET_MEAN, IMAGENET_STD
from flexitok.models.flextok import FlexTok
from flexitok.train.repa import DINOv2Features, build_repa_encoder, dinov2_config
from flexitok.train.tokenizer import TokenizerTask, TokenizerTaskConfig

transformers = pytest.importorskip("transformers")


def save_tiny_dinov2(folder: Path, patch: int = 4, registers: int = 0, seed: int = 0) -> Path:
    """A small random transformers DINOv2 (hidden 32, 2 layers) written with save_pretrained."""
    torch.manual_seed(seed)
    kw = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(
            patch_size=patch, image_size=32, num_register_tokens=registers, **kw
        )
        model = transformers.Dinov2WithRegistersModel(cfg)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(patch_size=patch, image_size=32, **kw))
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_dinov2(tmp_path_factory.mktemp("dinov2"))


def _model(image_size: int = 32) -> FlexTok:
    torch.manual_seed(0)
    return FlexTok(tiny_config(image_size=image_size, n_registers=8, dim=32, depth=2))


def test_dinov2_features_are_normed_patch_tokens_on_the_decoder_grid(dino_dir: Path) -> None:
    enc = build_repa_encoder(str(dino_dir), grid=(8, 8))
    assert isinstance(enc, DINOv2Features)
    assert enc.resolution == (32, 32) and enc.grid == (8, 8) and enc.out_dim == 32  # patch 4 x grid 8
    images = torch.rand(2, 3, 24, 24) * 2 - 1
    feats = enc(images)
    assert feats.shape == (2, 32, 8, 8)
    # Independent reference: ImageNet normalisation of [0, 1] images, bicubic resize, drop the CLS token.
    ref_model = transformers.AutoModel.from_pretrained(str(dino_dir)).eval()
    x = ((images + 1) / 2 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = nn.functional.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False)
    with torch.no_grad():
        out = ref_model(pixel_values=x).last_hidden_state
    expect = out[:, 1:].transpose(1, 2).reshape(2, 32, 8, 8)
    torch.testing.assert_close(feats, expect)
    # The last hidden state is layer-normed: per-token mean ~ the LayerNorm bias (zeros at init).
    assert float(out[:, 1:].mean(-1).abs().max()) < 1e-4


def test_register_tokens_are_dropped_and_preprocessor_stats_are_used(tmp_path: Path) -> None:
    folder = save_tiny_dinov2(tmp_path / "reg", registers=4)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    enc = build_repa_encoder(str(folder), grid=(4, 4))
    assert enc.num_prefix == 5 and enc.resolution == (16, 16)
    assert enc(torch.zeros(1, 3, 16, 16)).shape == (1, 32, 4, 4)
    torch.testing.assert_close(enc.preprocess(torch.zeros(1, 3, 16, 16)), torch.zeros(1, 3, 16, 16))  # 0.5 -> 0


def test_task_trains_through_dinov2_with_projector_sized_from_the_encoder(dino_dir: Path) -> None:
    model = _model()
    task = TokenizerTask(model, TokenizerTaskConfig(repa_encoder=str(dino_dir), repa_hidden=16))
    assert task.repa_layer == 0  # depth 2 // 4
    proj = task.aux_modules["repa_projector"]
    assert proj.net[0].in_features == 32 and proj.net[-1].out_features == 32  # decoder dim -> DINOv2 hidden
    loss, logs = task.loss({"image": torch.rand(2, 3, 32, 32) * 2 - 1}, 0)
    loss.backward()
    assert torch.isfinite(loss) and -1 <= float(logs["repa_cos"]) <= 1
    assert all(p.grad is not None for p in proj.parameters())
    assert all(p.grad is None and not p.requires_grad for p in task.repa_encoder.parameters())


def test_hub_id_downloads_through_huggingface_hub(dino_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id: str, **kwargs: object) -> str:
        calls.append((repo_id, kwargs))
        return str(dino_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    enc = build_repa_encoder("facebook/dinov2-small", grid=(8, 8))
    assert calls and calls[0][0] == "facebook/dinov2-small"
    assert "*.safetensors" in calls[0][1]["allow_patterns"]
    assert isinstance(enc, DINOv2Features) and enc.out_dim == 32

    def offline(repo_id: str, **kwargs: object) -> str:
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FeatureExtractorError, match="pass task.repa_encoder=<folder>"):
        build_repa_encoder("facebook/dinov2-large", grid=(16, 16))


def test_bad_repa_encoders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FeatureExtractorError, match="neither"):
        build_repa_encoder("./no/such/folder", grid=(4, 4))
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(FeatureExtractorError, match="'bert' model"):
        build_repa_encoder(str(other), grid=(4, 4))
    with pytest.raises(FeatureExtractorError, match="config.json"):
        build_repa_encoder(str(tmp_path), grid=(4, 4))
    with pytest.raises(InvalidInputError, match="repa_layer"):
        TokenizerTask(_model(), TokenizerTaskConfig(repa_layer=5, repa_encoder=str(tmp_path / "x")))


def test_known_architectures_without_download() -> None:
    cfg = dinov2_config("facebook/dinov2-large")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.patch_size) == (1024, 24, 14)


def test_cli_trains_tokenizer_through_a_local_dinov2(dino_dir: Path, tmp_path: Path, one_thread: None) -> None:
    from flexitok.cli.main import main
    from flexitok.train.checkpointing.files import load_checkpoint

    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "tokenizer",
            "--config",
            str(Path(__file__).resolve().parents[1] / "configs" / "tokenizer-tiny-fmnist.yaml"),
            "train.steps=3",
            f"task.repa_encoder={dino_dir}",
            f"train.out_dir={out}",
            "train.batch_size=4",
            "data.limit=16",
            "train.progress=false",
        ]
    )
    assert rc == 0
    ck = load_checkpoint(out / "last")
    assert ck.tensors["aux"]["repa_projector.net.4.weight"].shape[0] == 32  # sized from the DINOv2 hidden size
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "repa_cos" in logged[-1] and (out / "model" / "config.json").is_file()
