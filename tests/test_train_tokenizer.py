"""Tokenizer task: nested dropout masking, k / t samplers, FSQ options, REPA, overfitting, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from flexitok import DecodeConfig
from flexitok.config import tiny_config
from flexitok.errors import InvalidInputError
from flexitok.models.flextok import FlexTok
from flexitok.train.tokenizer import TokenizerTask, TokenizerTaskConfig, sample_k, sample_t
from flexitok.train.trainer import TrainerConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(n_registers: int = 8, image_size: int = 16) -> FlexTok:
    torch.manual_seed(0)
    model = FlexTok(tiny_config(image_size=image_size, n_registers=n_registers, dim=32, depth=2))
    # adaLN-zero makes the fresh decoder ignore its condition; perturb so "does not depend" is a real check.
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_nested_dropout_masks_positions_from_k() -> None:
    model = _model(n_registers=8)
    task = TokenizerTask(model, TokenizerTaskConfig(k_sampling="uniform", cfg_dropout=0.0))
    codes = model.fsq.ids_to_codes(torch.randint(0, model.vocab_size, (16, 8)))
    torch.manual_seed(1)
    cond, keep_k = task.condition(codes)
    assert keep_k.min() >= 1 and keep_k.max() <= 8 and len(set(keep_k.tolist())) > 2
    mask = model.decoder.mask_token
    for b in range(16):
        k = int(keep_k[b])
        assert torch.equal(cond[b, k:], mask.expand(8 - k, -1))
        assert not torch.isclose(cond[b, :k], mask.expand(k, -1)).all(dim=-1).any()

    # Change every token id at positions >= k: the condition and decoder output stay exactly the same.
    other_ids = torch.randint(0, model.vocab_size, (16, 8))
    other = model.fsq.ids_to_codes(other_ids)
    keep_pos = torch.arange(8)[None, :] < keep_k[:, None]
    codes2 = torch.where(keep_pos[..., None], codes, other)
    torch.manual_seed(1)
    cond2, keep_k2 = task.condition(codes2)
    assert torch.equal(keep_k, keep_k2) and torch.equal(cond, cond2)
    x_t, t = torch.randn(16, 3, 16, 16), torch.rand(16)
    with torch.no_grad():
        v1, v2 = model.decoder(x_t, t, cond), model.decoder(x_t, t, cond2)
        assert torch.equal(v1, v2)
        # ...while a change at a kept position does change the output.
        codes3 = codes.clone()
        codes3[:, 0] = -codes3[:, 0]
        v3 = model.decoder(x_t, t, model.decoder.condition(codes3, keep_k))
    assert not torch.allclose(v1, v3)


def test_cfg_dropout_uses_null_condition() -> None:
    model = _model()
    task = TokenizerTask(model, TokenizerTaskConfig(cfg_dropout=1.0))
    cond, _ = task.condition(model.fsq.ids_to_codes(torch.randint(0, model.vocab_size, (4, 8))))
    assert torch.equal(cond, model.decoder.null_condition(4))


@pytest.mark.parametrize(
    ("n", "mode", "support"),
    [
        (8, "uniform", set(range(1, 9))),
        (32, "pow2", {1, 2, 4, 8, 16, 32}),
        (24, "pow2", {1, 2, 4, 8, 16}),
        (32, "uniform_pow2", {1, 2, 4, 8, 16, 32}),
        (24, "uniform_pow2", {1, 2, 4, 8, 16, 24}),
    ],
)
def test_k_sampling_supports(n: int, mode: str, support: set[int]) -> None:
    torch.manual_seed(0)
    k = sample_k(20000, n, mode)  # type: ignore[arg-type]
    assert k.dtype == torch.long
    assert set(k.tolist()) == support
    counts = {v: int((k == v).sum()) for v in support}
    if mode == "pow2":  # uniform over the powers of two
        expected = 20000 / len(support)
        assert all(abs(c - expected) < 0.1 * expected for c in counts.values())
    if mode == "uniform_pow2" and n == 32:  # P(k = 2^m) = size of the bucket (2^(m-1), 2^m] / n
        assert abs(counts[32] / 20000 - 0.5) < 0.02 and abs(counts[1] / 20000 - 1 / 32) < 0.01


@pytest.mark.parametrize("mode", ["logit_normal", "uniform", "mode_scaled"])
def test_t_sampling(mode: str) -> None:
    torch.manual_seed(0)
    t = sample_t(20000, TokenizerTaskConfig(t_sampling=mode))  # type: ignore[arg-type]
    assert t.min() >= 0 and t.max() <= 1
    assert abs(float(t.median()) - 0.5) < 0.03
    if mode == "uniform":
        assert abs(float((t < 0.1).float().mean()) - 0.1) < 0.01
    else:  # both concentrate mass in the middle
        assert float((t < 0.1).float().mean()) < 0.08


def test_t_one_fraction_puts_that_share_at_pure_noise() -> None:
    torch.manual_seed(0)
    cfg = TokenizerTaskConfig(t_sampling="uniform", t_one_fraction=0.3)
    t = sample_t(20000, cfg)
    assert abs(float((t == 1.0).float().mean()) - 0.3) < 0.02
    rest = t[t < 1.0]  # the others keep the base distribution
    assert abs(float(rest.median()) - 0.5) < 0.03
    torch.manual_seed(0)
    plain = sample_t(100, TokenizerTaskConfig(t_sampling="uniform"))
    torch.manual_seed(0)
    assert torch.equal(plain, torch.rand(100))  # 0 (the default) draws no extra random numbers
    with pytest.raises(InvalidInputError, match="t_one_fraction"):
        TokenizerTaskConfig(t_one_fraction=1.5)


def test_fsq_options_change_the_codes() -> None:
    model = _model()
    x0 = torch.rand(8, 3, 16, 16) * 2 - 1
    plain = TokenizerTask(model, TokenizerTaskConfig()).codes(x0)
    cont = TokenizerTask(model, TokenizerTaskConfig(fsq_drop_quant=1.0)).codes(x0)
    # Continuous values round to the quantized codes but are not on the grid themselves.
    half = torch.tensor([lv // 2 for lv in model.fsq.levels_tuple], dtype=torch.float32)
    assert not torch.equal(cont, plain)
    assert torch.equal(torch.round(cont * half) / half, plain)
    torch.manual_seed(0)
    corrupted = TokenizerTask(model, TokenizerTaskConfig(token_corruption=0.5)).codes(x0)
    changed = (corrupted != plain).any(-1).float().mean()
    assert 0.3 < float(changed) < 0.7
    assert torch.equal(model.fsq.ids_to_codes(model.fsq.codes_to_ids(corrupted)), corrupted)  # still valid codes


class PatchMeanEncoder(nn.Module):
    """A stand-in REPA target: 4x4 average-pooled pixels, [B, 3, H/4, W/4]."""

    out_dim = 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(images, 4)


def test_repa_loss_trains_projector_and_decoder() -> None:
    model = _model()
    task = TokenizerTask(model, TokenizerTaskConfig(repa_layer=1, repa_hidden=32), repa_encoder=PatchMeanEncoder())
    batch = {"image": torch.rand(4, 3, 16, 16) * 2 - 1}
    loss, logs = task.loss(batch, 0)
    loss.backward()
    proj = task.aux_modules["repa_projector"]
    assert -1 <= float(logs["repa_cos"]) <= 1 and loss > logs["flow"] - 1.0001
    assert all(p.grad is not None for p in proj.parameters())
    assert model.decoder.trunk.blocks[0].attn.wq.weight.grad.abs().sum() > 0
    with pytest.raises(InvalidInputError, match="REPA needs the images"):
        task.loss({"latents": torch.randn(4, 3, 16, 16)}, 0)


def test_repa_default_encoder_is_efficientnet() -> None:
    model = _model(image_size=32)
    task = TokenizerTask(model, TokenizerTaskConfig(repa_layer=0, repa_hidden=16))
    assert task.aux_modules["repa_projector"].net[-1].out_features == 112
    loss, logs = task.loss({"image": torch.rand(2, 3, 32, 32) * 2 - 1}, 0)
    assert torch.isfinite(loss)


def test_precomputed_latents_batch() -> None:
    model = _model()
    task = TokenizerTask(model, TokenizerTaskConfig())
    loss, _ = task.loss({"latents": torch.randn(4, 3, 16, 16)}, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)


class Shapes(torch.utils.data.Dataset):
    """A handful of fixed structured images (overfitting target)."""

    def __init__(self, n: int = 8, size: int = 16) -> None:
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        imgs = []
        for i in range(n):
            r = torch.sin(3 * xx * (1 + i / n) + i)
            g = torch.cos(2 * yy * (1 + i / 2 / n) - i)
            b = ((xx**2 + yy**2) < (0.2 + i / n) ** 2).float() * 2 - 1
            imgs.append(torch.stack([r, g, b]).clamp(-1, 1))
        self.images = torch.stack(imgs)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": i}


def test_tiny_overfit_loss_decreases_and_eval_writes_grid(tmp_path: Path) -> None:
    # Short run (the default tier); test_tiny_overfit_long checks a much lower loss.
    model = _model()
    data = Shapes()
    task = TokenizerTask(
        model,
        TokenizerTaskConfig(
            eval_images=4,
            eval_ks=(1, 8),
            eval_decode=DecodeConfig(steps=4, guidance_scale=1.0, apg=False),
            cfg_dropout=0.0,
        ),
        eval_dataset=data,
    )
    cfg = TrainerConfig(
        out_dir=str(tmp_path),
        steps=100,
        batch_size=8,
        lr=3e-3,
        warmup_steps=10,
        log_every=10,
        ckpt_every=100,
        eval_every=100,
        ema_decay=0.95,
        progress=False,
    )
    final = train(task, data, cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert sum(losses[-3:]) / 3 < 0.75 * sum(losses[:2]) / 2, losses
    assert (tmp_path / "eval" / "recon_step00000100.png").is_file()
    psnr = [r for r in rows if "eval/psnr_k8" in r]
    assert psnr and psnr[0]["eval/psnr_k8"] > 5
    assert final.name == "step_00000100"
    exported = FlexTok.from_pretrained(tmp_path / "model")
    assert exported.config == model.config


@pytest.mark.slow
def test_tiny_overfit_long(tmp_path: Path) -> None:
    model = _model()
    data = Shapes()
    task = TokenizerTask(model, TokenizerTaskConfig(cfg_dropout=0.0, k_sampling="uniform"))
    cfg = TrainerConfig(
        out_dir=str(tmp_path),
        steps=600,
        batch_size=8,
        lr=3e-3,
        warmup_steps=20,
        log_every=20,
        ckpt_every=600,
        progress=False,
    )
    train(task, data, cfg)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < 0.45 * losses[0], losses
