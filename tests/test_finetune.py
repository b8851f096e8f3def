"""Higher resolution: configs/finetune-512.yaml grows a model's position tables and fine-tunes it (CPU smoke
run on the tiny preset: a 32x32 model fine-tuned at 64x64)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml

from flexitok import DecodeConfig, FlexTok, tiny_config
from flexitok.cli.main import main
from flexitok.errors import OutsideTrainedRegimeWarning
from flexitok.models.resize import grow_table, resize_for_finetuning
from flexitok.nn.embeddings import PositionEmbedding, sincos_2d_table
from tests.conftest import bilinear_align_corners, tiny_model

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "finetune-512.yaml"


def _recipe(tmp_path: Path, init_from: Path, **model) -> Path:
    """The 256 -> 512 recipe with only the sizes (and the CPU-only settings) scaled down to the tiny preset."""
    cfg = yaml.safe_load(RECIPE.read_text())
    assert cfg["model"]["image_size"] == [512, 512] and cfg["data"]["image_size"] == 512
    cfg["model"] = {"preset": "tiny", "image_size": [64, 64], **model}
    cfg["init_from"] = str(init_from)
    cfg["data"] = {**cfg["data"], "kind": "fashion_mnist", "path": None, "image_size": 64, "limit": 16}
    cfg["train"].update(out_dir=str(tmp_path / "run"), steps=2, batch_size=4, grad_accum=1, compile=False,
                        activation_checkpointing=False, num_workers=0, eval_every=0, ckpt_every=2, log_every=1,
                        warmup_steps=1, progress=False)  # fmt: skip
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_finetune_recipe_takes_a_32_model_to_64(tmp_path, one_thread):
    src = tiny_model()
    src.save_pretrained(tmp_path / "src")
    assert main(["train", "tokenizer", "--config", str(_recipe(tmp_path, tmp_path / "src"))]) == 0
    tuned = FlexTok.from_pretrained(tmp_path / "run" / "model")
    assert tuned.image_size == (64, 64)
    assert tuned.encoder.posemb.sizes == (16, 16) and tuned.decoder.posemb.sizes == (16, 16)
    # The grown sin-cos tables keep the source's 8x8 corner, so 32x32 inputs start out exactly as before.
    assert torch.equal(tuned.encoder.posemb.table[:, :, :8, :8], src.encoder.posemb.table)
    assert torch.allclose(tuned.encoder.posemb.table, sincos_2d_table(64, 16, 16), atol=1e-6)
    assert not torch.equal(tuned.encoder.registers, src.encoder.registers)  # it trained
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutsideTrainedRegimeWarning)  # 64x64 is now inside the tables
        assert tuned.tokenize(torch.rand(1, 3, 64, 64) * 2 - 1).shape == (1, 16)


def test_finetune_refuses_a_different_architecture(tmp_path, one_thread, capsys):
    tiny_model().save_pretrained(tmp_path / "src")
    path = _recipe(tmp_path, tmp_path / "src", decoder={"max_timestep": 1000.0})
    assert main(["train", "tokenizer", "--config", str(path)]) == 2
    assert "model.decoder.max_timestep = 1000.0 but the checkpoint has 1.0" in capsys.readouterr().err


def test_resized_model_matches_the_source_inside_the_old_grid(one_thread):
    src = tiny_model()
    big = resize_for_finetuning(src, (64, 48))
    assert big.image_size == (64, 48) and big.encoder.posemb.sizes == (16, 12)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(big.tokenize(images), src.tokenize(images))
    noise = torch.randn(2, 3, 32, 32)
    a = src.detokenize(src.tokenize(images), DecodeConfig(steps=2), noise=noise)
    b = big.detokenize(src.tokenize(images), DecodeConfig(steps=2), noise=noise, image_size=32)
    assert torch.equal(a, b)
    assert resize_for_finetuning(src, (16, 16)).encoder.posemb.sizes == (8, 8)  # smaller: tables kept


def test_learned_tables_grow_by_linear_interpolation():
    pe = PositionEmbedding(8, (4, 4), kind="learnable_sum")
    grown = grow_table(pe, (7, 5))
    assert grown.shape == (2, 1, 8, 7)
    for axis in range(2):
        ref = bilinear_align_corners(pe.table[axis, 0].detach().double().numpy()[:, None, :], (1, 7))[:, 0, :]
        assert (grown[axis, 0].double() - torch.from_numpy(ref)).abs().max() < 1e-6


def test_flat_tables_cannot_grow():
    pe = PositionEmbedding(8, (9,), kind="learnable_sum")
    with pytest.raises(ValueError, match="1-D"):
        grow_table(pe, (4, 4))


def test_resize_checks_the_size():
    with pytest.raises(ValueError, match="multiple of 4"):
        resize_for_finetuning(FlexTok(tiny_config()), (66, 64))
