"""Stage-0 VAE training task: a diffusers ``AutoencoderKL`` with L1/L2 + KL (+ perceptual, + patch-GAN) losses.

The trainer's optimizer updates the autoencoder. The optional patch discriminator is an
:class:`~flexitok.train.task.ExtraOptimizer` with its own AdamW: once ``gan_start`` is reached the trainer takes
one hinge-loss step of it per optimizer update (over all micro-batches of the update, on reconstructions drawn
with the same randomness as the main pass), then the autoencoder's loss scores its reconstructions with the
updated discriminator.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from flexitok.data import DataConfig, build_dataset
from flexitok.errors import ConfigError, InvalidInputError
from flexitok.eval.metrics import frechet_distance, psnr
from flexitok.io.images import save_grid
from flexitok.models.vae import load_autoencoder_kl
from flexitok.train.config import RunConfig
from flexitok.train.heldout import eval_extractor, first_items, plain_images
from flexitok.train.run import TrainTarget, held_out
from flexitok.train.task import ExtraOptimizer, TrainTask
from flexitok.train.trainer_config import TrainerConfig
from flexitok.utils.config_json import Bound
from flexitok.utils.files import replace_dir

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

    from flexitok.train.features import EfficientNetLite0FeatureMaps


@dataclass
class VAEModelConfig:
    """A diffusers ``AutoencoderKL``: built from these sizes, or fine-tuned from ``pretrained``.

    Downsampling is ``2 ** (len(block_out_channels) - 1)``.
    """

    FIELD_BOUNDS: ClassVar[dict[str, Bound]] = {
        "latent_channels": Bound(1, 4096),
        "block_out_channels": Bound(1, 2**14),
        "layers_per_block": Bound(1, 64),
        "norm_num_groups": Bound(1, 4096),
        "scaling_factor": Bound(0, 1e4, positive=True),
    }

    pretrained: str | None = None
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (64, 128, 256)
    layers_per_block: int = 1
    norm_num_groups: int = 32
    scaling_factor: float = 1.0

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class VAETaskConfig:
    FIELD_BOUNDS: ClassVar[dict[str, Bound]] = {
        "kl_weight": Bound(0, 1e3),
        "perceptual_weight": Bound(0, 1e3),
        "gan_weight": Bound(0, 1e3),
        "gan_start": Bound(0, 2**40),
        "disc_lr": Bound(0, 1, positive=True),
        "disc_channels": Bound(1, 4096),
        "disc_layers": Bound(1, 8),
        "eval_images": Bound(0, 2**16),
        "eval_latent_stats": Bound(0, 2**24),
    }
    recon_loss: Literal["l1", "l2"] = "l1"
    kl_weight: float = 1e-6
    perceptual_weight: float = 0.0  # EfficientNet-Lite0 feature distance
    gan_weight: float = 0.0  # 0 = no discriminator
    gan_start: int = 0  # step at which the adversarial loss switches on
    disc_lr: float = 1e-4
    disc_channels: int = 64
    disc_layers: int = 3
    eval_images: int = 8
    eval_extractor: str | None = "efflite0"  # Frechet distance of reconstructions to originals (None: PSNR only)
    # Training images whose latents give the exported latent statistics (latent_stats.json; 0: none).
    eval_latent_stats: int = 256

    def __post_init__(self) -> None:
        if self.recon_loss not in ("l1", "l2"):
            raise ConfigError(f"task.recon_loss must be 'l1' or 'l2', got {self.recon_loss!r}")
        for name in ("kl_weight", "perceptual_weight", "gan_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"task.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class VAETrainConfig(RunConfig):
    """``flexitok train vae``."""

    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(kind="fashion_mnist"))
    train: TrainerConfig = field(default_factory=TrainerConfig)
    task: VAETaskConfig = field(default_factory=VAETaskConfig)
    eval_data: DataConfig | None = None


def build_autoencoder(cfg: VAEModelConfig) -> AutoencoderKL:
    """A diffusers ``AutoencoderKL`` from ``cfg`` (random init) or loaded from ``cfg.pretrained``."""
    from diffusers import AutoencoderKL

    if cfg.pretrained is not None:
        if not Path(cfg.pretrained).exists():
            raise InvalidInputError(f"pretrained VAE folder {cfg.pretrained} does not exist")
        return load_autoencoder_kl(cfg.pretrained)
    bad = [c for c in cfg.block_out_channels if c % cfg.norm_num_groups]
    if bad:
        raise InvalidInputError(
            f"model.block_out_channels {cfg.block_out_channels} must all be multiples of norm_num_groups "
            f"({cfg.norm_num_groups})"
        )
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        scaling_factor=cfg.scaling_factor,
    )


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``images [B,3,H,W] -> logits [B,1,h,w]`` (stride-2 convs, GroupNorm, LeakyReLU)."""

    def __init__(self, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers):
            out = channels * min(2**i, 8)
            mods += [nn.Conv2d(ch, out, 4, 2, 1, bias=False), nn.GroupNorm(min(32, out // 4), out), nn.LeakyReLU(0.2)]
            ch = out
        mods.append(nn.Conv2d(ch, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def perceptual_distance(feats_a: list[Tensor], feats_b: list[Tensor]) -> Tensor:
    """LPIPS-style distance without learned weights: MSE of channel-normalised feature maps, summed over layers."""
    total = feats_a[0].new_zeros(())
    for a, b in zip(feats_a, feats_b, strict=True):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-8)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-8)
        total = total + (a - b).pow(2).sum(1).mean()
    return total


LATENT_STATS = "latent_stats.json"  # beside the exported VAE's config.json


@torch.no_grad()
def latent_stats(vae: AutoencoderKL, dataset: Dataset, n: int, batch_size: int = 32) -> dict[str, Any]:
    """Mean and std of the posterior-mode latents of the first ``n`` images of ``dataset`` (over all channels and
    positions, as the LDM scale factor), per-channel stds, and ``scaling_factor = 1 / std`` (unit-variance latents
    for the tokenizer's flow)."""
    device = next(vae.parameters()).device
    was_training = vae.training
    vae.eval()
    total, sq, count = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64), 0
    ch_sum: Tensor | None = None
    ch_sq: Tensor | None = None
    items = first_items(dataset, n)
    for i in range(0, len(items), batch_size):
        images = torch.stack([it["image"] for it in items[i : i + batch_size]]).to(device)
        z = vae.encode(images).latent_dist.mode().double().cpu()  # [B, C, h, w]
        total, sq, count = total + z.sum(), sq + z.pow(2).sum(), count + z.numel()
        per = z.transpose(0, 1).flatten(1)  # [C, B*h*w]
        ch_sum = per.sum(1) if ch_sum is None else ch_sum + per.sum(1)
        ch_sq = per.pow(2).sum(1) if ch_sq is None else ch_sq + per.pow(2).sum(1)
    vae.train(was_training)
    if count == 0 or ch_sum is None or ch_sq is None:
        raise InvalidInputError("latent statistics need at least one training image")
    mean = float(total / count)
    std = float((sq / count - mean**2).clamp_min(0).sqrt())
    per_count = count // ch_sum.numel()
    ch_std = ((ch_sq / per_count) - (ch_sum / per_count) ** 2).clamp_min(0).sqrt()
    return {
        "images": len(items),
        "latent_mean": mean,
        "latent_std": std,
        "channel_std": [float(v) for v in ch_std],
        "scaling_factor": 1.0 / std if std > 0 else 1.0,
    }


class VAETask(TrainTask):
    """:class:`~flexitok.train.task.TrainTask` for a diffusers ``AutoencoderKL``."""

    model: AutoencoderKL

    def __init__(
        self,
        vae: AutoencoderKL,
        cfg: VAETaskConfig,
        eval_dataset: Dataset | None = None,
        stats_dataset: Dataset | None = None,
    ) -> None:
        super().__init__(vae)
        self.cfg = cfg
        self.stats_dataset = stats_dataset  # the training images of latent_stats.json
        self.eval_dataset = eval_dataset
        self.extractor = eval_extractor(cfg.eval_extractor, eval_dataset, cfg.eval_images)
        self.perceptual: EfficientNetLite0FeatureMaps | None = None
        if cfg.perceptual_weight > 0:
            from flexitok.train.features import EfficientNetLite0FeatureMaps

            self.perceptual = self.frozen_modules["perceptual"] = EfficientNetLite0FeatureMaps(blocks=(2, 4, 10))
        self.disc: PatchDiscriminator | None = None
        self.disc_opt: torch.optim.Optimizer | None = None
        if cfg.gan_weight > 0:
            self.disc = PatchDiscriminator(cfg.disc_channels, cfg.disc_layers)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9))

    def reconstruct(self, images: Tensor, sample: bool = True) -> tuple[Tensor, Any]:
        """``images [B,3,H,W]`` -> (reconstruction ``[B,3,H,W]``, posterior)."""
        posterior = self.model.encode(images).latent_dist
        z = posterior.sample() if sample else posterior.mode()
        return self.model.decode(z).sample, posterior

    def _gan_on(self, step: int) -> bool:
        return self.disc is not None and step >= self.cfg.gan_start

    # ------------------------------------------------------------------ TrainTask
    def loss(self, batch: dict[str, Any], step: int) -> tuple[Tensor, dict[str, Any]]:
        cfg = self.cfg
        x = self._images(batch)
        recon, posterior = self.reconstruct(x)
        recon_f = recon.float()
        rec = F.l1_loss(recon_f, x) if cfg.recon_loss == "l1" else F.mse_loss(recon_f, x)
        # KL summed per sample, divided by the pixel count: same relative scale as summed pixel losses (LDM).
        kl = posterior.kl().mean() / x[0].numel()
        total = rec + cfg.kl_weight * kl
        logs: dict[str, Any] = {"rec": rec.detach(), "kl": kl.detach()}
        if self.perceptual is not None:
            p = perceptual_distance(self.perceptual.feature_maps(recon_f), self.perceptual.feature_maps(x))
            total = total + cfg.perceptual_weight * p
            logs["perceptual"] = p.detach()
        if self._gan_on(step):
            assert self.disc is not None
            # Generator term through the discriminator the trainer has just updated, with its weights frozen.
            self.disc.requires_grad_(False)
            g_adv = -self.disc(recon_f).mean()
            self.disc.requires_grad_(True)
            total = total + cfg.gan_weight * g_adv
            logs["g_adv"] = g_adv.detach()
        return total, logs

    def discriminator_loss(self, batch: dict[str, Any], step: int) -> tuple[Tensor | None, dict[str, Any]]:
        """Hinge loss of the discriminator on real images vs (detached) reconstructions; None before gan_start."""
        if not self._gan_on(step):
            return None, {}
        assert self.disc is not None
        x = self._images(batch)
        with torch.no_grad():
            fake = self.reconstruct(x)[0].float()
        logits = self.disc(torch.cat([x, fake])).float()
        lr, lf = logits.chunk(2)
        d_loss = F.relu(1.0 - lr).mean() + F.relu(1.0 + lf).mean()
        return d_loss, {"d_loss": d_loss.detach()}

    def extra_optimizers(self) -> list[ExtraOptimizer]:
        if self.disc is None:
            return []
        assert self.disc_opt is not None
        return [ExtraOptimizer("disc", self.disc, self.disc_opt, self.discriminator_loss)]

    @staticmethod
    def _images(batch: dict[str, Any]) -> Tensor:
        if "image" not in batch:
            raise InvalidInputError("VAE training batches need an 'image' [B,3,H,W] entry")
        return batch["image"]

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        """Grid PNG (originals / reconstructions from the posterior mode), mean PSNR and (with an extractor) the
        Frechet distance of the reconstructions' features to the originals' (``fd``)."""
        from diffusers import AutoencoderKL

        assert isinstance(model, AutoencoderKL)  # the task's model or its EMA copy
        if self.eval_dataset is None or self.cfg.eval_images <= 0:
            return {}
        n = min(self.cfg.eval_images, len(self.eval_dataset))  # type: ignore[arg-type]
        device = next(model.parameters()).device
        images = torch.stack([self.eval_dataset[i]["image"] for i in range(n)]).to(device)
        posterior = model.encode(images).latent_dist
        recon = model.decode(posterior.mode()).sample.float().clamp(-1, 1)
        save_grid([images, recon], out_dir / f"vae_recon_step{step:08d}.png", pad=0)
        # A finite floor on the MSE keeps a perfect reconstruction loggable (126 dB instead of inf).
        metrics = {"psnr": float(psnr(recon, images, min_mse=1e-12).mean())}
        if self.extractor is not None:
            extractor = self.extractor.to(device) if isinstance(self.extractor, nn.Module) else self.extractor
            metrics["fd"] = frechet_distance(extractor(recon).double().cpu(), extractor(images).double().cpu())
        return metrics

    def export(self, model: nn.Module, out_dir: Path) -> None:
        """``save_pretrained`` into ``<out_dir>/vae`` (written to a temp folder, then renamed into place)."""
        from diffusers import AutoencoderKL

        assert isinstance(model, AutoencoderKL)
        final = Path(out_dir) / "vae"
        tmp = Path(out_dir) / f".tmp-vae-{uuid.uuid4().hex[:8]}"
        model.save_pretrained(str(tmp))
        if self.stats_dataset is not None and self.cfg.eval_latent_stats > 0:
            stats = latent_stats(model, self.stats_dataset, self.cfg.eval_latent_stats)
            (tmp / LATENT_STATS).write_text(json.dumps(stats, indent=1) + "\n")
            print(
                f"latent std {stats['latent_std']:.4g} over {stats['images']} training images: "
                f"scaling_factor {stats['scaling_factor']:.4g} (written to {final / LATENT_STATS}; a tokenizer takes it "
                "with model.vae.scaling_factor: auto)",
                flush=True,
            )
        replace_dir(tmp, final)


def build(cfg: VAETrainConfig) -> tuple[TrainTask, Dataset]:
    """The VAE target: a diffusers AutoencoderKL (new, or ``model.pretrained`` fine-tuned) on images."""
    if cfg.data.image_size % cfg.model.downsample:
        raise ConfigError(
            f"data.image_size {cfg.data.image_size} is not divisible by the VAE downsampling {cfg.model.downsample}"
        )
    train_data, eval_ds = held_out(cfg.data, cfg.eval_data, cfg.task.eval_images, cfg.train)
    torch.manual_seed(cfg.train.seed)
    vae = build_autoencoder(cfg.model)
    dataset = build_dataset(train_data)
    return VAETask(vae, cfg.task, eval_dataset=eval_ds, stats_dataset=build_dataset(plain_images(train_data))), dataset


TARGET = TrainTarget(
    name="vae",
    help="train or fine-tune a diffusers AutoencoderKL (stage 0)",
    config_class=VAETrainConfig,
    build=build,
    exported=lambda cfg: Path(cfg.train.out_dir) / "vae",
    export_label="VAE (diffusers format)",
)
