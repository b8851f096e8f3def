"""The paper recipe configs and ``flexitok train tokenizer --dry-run`` (meta-device FLOPs / memory estimate)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from flexitok.train.config import load_run_config
from flexitok.train.estimate import GPU_MEMORY_GB, estimate
from flexitok.train.tokenizer import TokenizerTrainConfig

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = ["tokenizer-d12-d12.yaml", "tokenizer-d18-d18.yaml", "tokenizer-d18-d28.yaml"]


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_carry_the_published_recipe(name: str) -> None:
    cfg = load_run_config(TokenizerTrainConfig, ROOT / "configs" / name)
    t, d, m = cfg.train, cfg.data, cfg.model
    assert 8 * t.batch_size * t.grad_accum == 1024  # global batch on 8 GPUs
    assert (t.lr, t.weight_decay, t.precision) == (5e-4, 0.05, "bf16")
    assert d.random_resized_crop == (0.4, 1.0) and d.image_size == 256 and tuple(m.image_size) == (256, 256)
    assert m.n_registers == 256 and m.fsq_levels == (8, 8, 8, 5, 5, 5) and m.vae.latent_channels == 16
    assert cfg.task.repa_encoder == "facebook/dinov2-large" and cfg.task.k_sampling == "pow2"
    text = (ROOT / "configs" / name).read_text()
    assert "[paper]" in text and "[ours]" in text


def _tiny(**train: object) -> TokenizerTrainConfig:
    overrides = [f"train.{k}={v}" for k, v in train.items()]
    return load_run_config(TokenizerTrainConfig, ROOT / "configs" / "tokenizer-tiny-fmnist.yaml", overrides)


def _forward_matmul_flops(trunk: nn.Module, tokens: int) -> float:
    """Independent count: 2 x (non-adaLN linear weights) x tokens + attention (4 T^2 D per block)."""
    mm = sum(m.weight.numel() for n, m in trunk.named_modules() if isinstance(m, nn.Linear) and "adaLN" not in n)
    dim = trunk.blocks[0].attn.wq.weight.shape[0]
    return 2.0 * mm * tokens + 4.0 * len(trunk.blocks) * tokens**2 * dim


def test_estimate_matches_the_model_and_scales_with_batch() -> None:
    from flexitok.models.flextok import FlexTok

    e = estimate(_tiny(batch_size=8))
    real = FlexTok(_tiny().model)
    assert e.params_encoder == sum(p.numel() for p in real.encoder.parameters())
    assert e.params_decoder == sum(p.numel() for p in real.decoder.parameters())
    assert e.params_vae == 0 and e.params_repa == 0 and e.flops_vae == 0
    tokens = 64 + 32  # 8x8 patches + 32 registers, encoder and decoder alike
    analytic = 3 * (
        _forward_matmul_flops(real.encoder.trunk, tokens) + _forward_matmul_flops(real.decoder.trunk, tokens)
    )
    assert 0.9 * analytic < e.flops_trained < 1.3 * analytic  # + patch embeddings, heads, adaLN
    e16 = estimate(_tiny(batch_size=16))
    assert e16.activations_bytes == pytest.approx(2 * e.activations_bytes)
    ckpt = estimate(_tiny(batch_size=8, activation_checkpointing=True))
    assert ckpt.activations_bytes < 0.8 * e.activations_bytes and ckpt.flops_recompute > 0
    assert ckpt.flops_trained == pytest.approx(e.flops_trained)
    assert e.per_gpu_bytes() < GPU_MEMORY_GB * 1e9 and e.gpus_needed() == 1


def test_fsdp_shards_the_states() -> None:
    e = estimate(_tiny(fsdp=True), world_size=4)
    plain = estimate(_tiny())
    assert e.state_bytes()["AdamW moments (2 x fp32)"] == pytest.approx(
        plain.state_bytes()["AdamW moments (2 x fp32)"] / 4
    )
    assert e.state_bytes(8)["weights (fp32)"] < e.state_bytes(2)["weights (fp32)"]


def test_dry_run_cli_with_a_local_dinov2_touches_no_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    transformers = pytest.importorskip("transformers")
    from flexitok.cli.main import main

    folder = tmp_path / "dino"
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=4)
    transformers.Dinov2Model(cfg).save_pretrained(str(folder))
    argv = ["train", "tokenizer", "--config", str(ROOT / "configs" / "tokenizer-tiny-fmnist.yaml"), "--dry-run"]
    rc = main([*argv, f"task.repa_encoder={folder}", "data.path=/nonexistent", f"train.out_dir={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert rc == 0 and "REPA target" in out and "DINOv2, 32x32 input" in out and "GPUs" in out
    assert not (tmp_path / "run").exists()
    assert main(["train", "vae", "--dry-run"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_dry_run_paper_configs_offline(name: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import huggingface_hub

    from flexitok.cli.main import main

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dry run must not download anything")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    assert main(["train", "tokenizer", "--config", str(ROOT / "configs" / name), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "facebook/dinov2-large (DINOv2, 224x224 input)" in out and "304.4M" in out  # DINOv2-L
    assert "fits at micro-batch 64" in out
    assert torch.cuda.memory_allocated() == 0 if torch.cuda.is_available() else True
