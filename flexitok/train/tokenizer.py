"""FlexTok tokenizer training task: rectified flow on VAE latents with nested dropout, CFG dropout, FSQ tricks, REPA.

Per batch: ``x0 = vae.encode(image)`` (frozen VAE) or pre-computed ``latents``; ``z = encoder(x0)``;
``codes = fsq(z)``; keep the first ``k`` registers (nested dropout) and mask the rest; replace the condition by
the null condition with probability ``cfg_dropout``; draw ``t`` and noise, ``x_t = t*noise + (1-t)*x0`` and
regress the velocity ``noise - x0`` (MSE). Optionally REPA aligns decoder patch features at one layer (through
an MLP projector) with a frozen image encoder's features by cosine similarity.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from flexitok.config import FlexTokConfig, preset
from flexitok.data import DataConfig, LatentCacheDataset, build_dataset
from flexitok.errors import ConfigError, InvalidInputError
from flexitok.eval.reconstruction import default_ks, evaluate_reconstruction
from flexitok.io.images import save_grid
from flexitok.models.flextok import FlexTok
from flexitok.models.resize import resize_for_finetuning
from flexitok.sampling.decode import DecodeConfig
from flexitok.train.config import RunConfig
from flexitok.train.heldout import eval_extractor
from flexitok.train.repa import EFFICIENTNET, REPAProjector, build_repa_encoder, repa_loss
from flexitok.train.run import TrainTarget, held_out
from flexitok.train.task import TrainTask
from flexitok.train.trainer_config import TrainerConfig
from flexitok.utils.config_json import Bound

__all__ = [
    "TARGET",
    "REPAProjector",
    "TokenizerTask",
    "TokenizerTaskConfig",
    "TokenizerTrainConfig",
    "repa_loss",
    "sample_k",
    "sample_t",
]

TSampling = Literal["logit_normal", "uniform", "mode_scaled"]
KSampling = Literal["uniform", "pow2", "uniform_pow2"]


@dataclass
class TokenizerTaskConfig:
    # Ranges checked when the config is read (flexitok.train.config): a bad value names its dotted key.
    FIELD_BOUNDS: ClassVar[dict[str, Bound]] = {
        "t_mean": Bound(-20, 20),
        "t_std": Bound(0, 20, positive=True),
        "mode_scale": Bound(-10, 10),
        "t_one_fraction": Bound(0, 1),
        "cfg_dropout": Bound(0, 1),
        "fsq_drop_quant": Bound(0, 1),
        "token_corruption": Bound(0, 1),
        "repa_layer": Bound(0, 1024),
        "repa_weight": Bound(0, 1e3),
        "repa_blocks": Bound(1, 64),
        "repa_resolution": Bound(1, 2**14),
        "repa_hidden": Bound(1, 2**16),
        "eval_images": Bound(0, 2**16),
        "eval_ks": Bound(1, 2**16),
    }
    t_sampling: TSampling = "logit_normal"
    t_mean: float = 0.0  # logit-normal location
    t_std: float = 1.0  # logit-normal scale
    mode_scale: float = 1.29  # mode-scaled sampling (SD3): > 0 puts more mass in the middle of [0, 1]
    # Fraction of samples trained at exactly t = 1 (pure noise). There the velocity loss is the MSE of the
    # decoder's x0 estimate from the tokens alone, an autoencoder loss that rewards detail in every token.
    t_one_fraction: float = 0.0
    k_sampling: KSampling = "pow2"  # nested dropout: uniform 1..N, powers of two, uniform rounded up to 2^m
    cfg_dropout: float = 0.1  # probability of the null condition (classifier-free guidance)
    fsq_drop_quant: float = 0.0  # fraction of samples decoded from the continuous (unrounded) FSQ values
    token_corruption: float = 0.0  # fraction of token ids replaced by random ids
    # REPA is on when repa_layer or repa_encoder is set (flexitok.train.repa).
    repa_layer: int | None = None  # decoder block (0-based) whose patch features are aligned; None: depth // 4
    repa_encoder: str | None = None  # efficientnet-lite0 (None), a DINOv2 hub id or a local Dinov2Model folder
    repa_weight: float = 1.0
    repa_blocks: int = 10  # EfficientNet-Lite0 block for the target features (10: stride 16, 112 channels)
    repa_resolution: int | None = None  # target-encoder input side (None: native; DINOv2: patch x decoder grid)
    repa_hidden: int = 1024  # projector MLP width
    eval_images: int = 8
    eval_ks: tuple[int, ...] | None = None  # None: 1, 2, 4, ..., N
    eval_decode: DecodeConfig = DecodeConfig(steps=20, guidance_scale=1.0, apg=False, seed=0)
    # Frechet distance per k between the held-out images and their reconstructions (None: PSNR only).
    eval_extractor: str | None = "efflite0"

    @property
    def repa_enabled(self) -> bool:
        return self.repa_layer is not None or self.repa_encoder is not None

    def __post_init__(self) -> None:
        if self.eval_ks is not None:
            self.eval_ks = tuple(int(k) for k in self.eval_ks)
        checks = [
            (self.t_sampling in ("logit_normal", "uniform", "mode_scaled"), f"unknown t_sampling {self.t_sampling!r}"),
            (self.k_sampling in ("uniform", "pow2", "uniform_pow2"), f"unknown k_sampling {self.k_sampling!r}"),
            (self.t_std > 0, f"t_std must be > 0, got {self.t_std}"),
        ]
        for name in ("cfg_dropout", "fsq_drop_quant", "token_corruption", "t_one_fraction"):
            v = getattr(self, name)
            checks.append((0.0 <= v <= 1.0, f"{name} must lie in [0, 1], got {v}"))
        for ok, msg in checks:
            if not ok:
                raise InvalidInputError(f"tokenizer task: {msg}")


# ---------------------------------------------------------------------------------------------- samplers


def sample_t(batch_size: int, cfg: TokenizerTaskConfig, device: torch.device | str = "cpu") -> Tensor:
    """Flow times ``t [B]`` in (0, 1] (t = 1 is pure noise), a fraction ``t_one_fraction`` of them exactly 1."""
    t = _sample_t(batch_size, cfg, device)
    if cfg.t_one_fraction > 0:
        t = torch.where(torch.rand(batch_size, device=device) < cfg.t_one_fraction, torch.ones_like(t), t)
    return t


def _sample_t(batch_size: int, cfg: TokenizerTaskConfig, device: torch.device | str) -> Tensor:
    if cfg.t_sampling == "uniform":
        return torch.rand(batch_size, device=device)
    if cfg.t_sampling == "logit_normal":
        return torch.sigmoid(torch.randn(batch_size, device=device) * cfg.t_std + cfg.t_mean)
    # Mode sampling with heavy tails (Esser et al. 2024, eq. 20): t = 1 - u - s*(cos^2(pi u / 2) - 1 + u).
    u = torch.rand(batch_size, device=device)
    t = 1 - u - cfg.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return t.clamp(0.0, 1.0)


def sample_k(batch_size: int, n: int, mode: KSampling, device: torch.device | str = "cpu") -> Tensor:
    """Nested-dropout lengths ``k [B]`` in 1..n (LongTensor)."""
    if mode == "uniform":
        return torch.randint(1, n + 1, (batch_size,), device=device)
    pows = [1 << i for i in range(n.bit_length()) if (1 << i) <= n]
    if mode == "pow2":
        choice = torch.randint(0, len(pows), (batch_size,), device=device)
        return torch.tensor(pows, device=device)[choice]
    # uniform_pow2: uniform k, rounded up to the next power of two (capped at n).
    k = torch.randint(1, n + 1, (batch_size,), device=device)
    up = torch.exp2(torch.ceil(torch.log2(k.double()))).long()
    return up.clamp(max=n)


# ---------------------------------------------------------------------------------------------- the task


class TokenizerTask(TrainTask):
    """:class:`~flexitok.train.task.TrainTask` for a :class:`flexitok.FlexTok`.

    ``repa_encoder``: any callable ``images [B,3,H,W] -> [B,D',h',w']`` or ``[B,M,D']``; when None and REPA is
    on, the encoder named by ``cfg.repa_encoder`` is built (:func:`flexitok.train.repa.build_repa_encoder`).
    ``eval_dataset`` (items with ``"image"``) feeds periodic reconstruction grids.
    """

    model: FlexTok

    def __init__(
        self,
        model: FlexTok,
        cfg: TokenizerTaskConfig,
        eval_dataset: Dataset | None = None,
        repa_encoder: Callable[[Tensor], Tensor] | None = None,
        repa_out_dim: int | None = None,
    ) -> None:
        super().__init__(model)
        self.cfg = cfg
        self.eval_dataset = eval_dataset
        self.extractor = eval_extractor(cfg.eval_extractor, eval_dataset, cfg.eval_images)
        self.model.vae.requires_grad_(False)  # stage 0 is frozen
        self.repa_encoder: Callable[[Tensor], Tensor] | None = None
        self.repa_layer: int | None = None
        if cfg.repa_enabled:
            depth = len(model.decoder.trunk.blocks)
            # Default: REPA's SiT-XL choice (block 8 of 28) scaled to the decoder depth.
            layer = cfg.repa_layer if cfg.repa_layer is not None else depth // 4
            if not 0 <= layer < depth:
                raise InvalidInputError(f"repa_layer must lie in 0..{depth - 1}, got {layer}")
            self.repa_layer = layer
            if repa_encoder is None:
                repa_encoder = build_repa_encoder(
                    cfg.repa_encoder or EFFICIENTNET, self.patch_grid(), cfg.repa_resolution, cfg.repa_blocks
                )
            if isinstance(repa_encoder, nn.Module):
                repa_encoder.requires_grad_(False).eval()
                self.frozen_modules["repa_encoder"] = repa_encoder  # the trainer moves it to the device
            self.repa_encoder = repa_encoder
            out_dim = repa_out_dim or getattr(repa_encoder, "out_dim", None) or self._probe_dim(repa_encoder)
            dim = model.config.decoder.transformer.dim
            self.aux_modules["repa_projector"] = REPAProjector(dim, cfg.repa_hidden, int(out_dim))

    def patch_grid(self) -> tuple[int, int]:
        """The decoder's patch grid (h, w) on the latent of one image."""
        h, w = self.model.config.latent_size
        ph, pw = self.model.config.decoder.patch_size
        return h // ph, w // pw

    def _probe_dim(self, encoder: Callable[[Tensor], Tensor]) -> int:
        h, w = self.model.image_size
        with torch.no_grad():
            f = encoder(torch.zeros(1, 3, h, w))
        return int(f.shape[1] if f.ndim == 4 else f.shape[-1])

    # ------------------------------------------------------------------ pieces
    def latents(self, batch: dict[str, Any]) -> Tensor:
        if "latents" in batch:
            return batch["latents"].float()
        if "image" not in batch:
            raise InvalidInputError("tokenizer batches need an 'image' [B,3,H,W] or a 'latents' [B,C,h,w] entry")
        with torch.no_grad():
            return self.model.vae.encode(batch["image"]).float()

    def codes(self, x0: Tensor) -> Tensor:
        """Latents ``[B,C,h,w]`` -> decoder input codes ``[B,N,d]`` with the FSQ training options applied."""
        model, cfg = self.model, self.cfg
        z = model.encoder(x0)
        codes, _ = model.fsq(z)
        b, n, d = codes.shape
        if cfg.fsq_drop_quant > 0:
            # Continuous FSQ values on the same [-1, 1] scale as the codes, but not rounded.
            half_width = torch.tensor([lv // 2 for lv in model.fsq.levels_tuple], device=z.device, dtype=codes.dtype)
            continuous = model.fsq.bound(z) / half_width
            drop = torch.rand(b, device=z.device) < cfg.fsq_drop_quant
            codes = torch.where(drop[:, None, None], continuous, codes)
        if cfg.token_corruption > 0:
            corrupt = torch.rand(b, n, device=z.device) < cfg.token_corruption
            random_ids = torch.randint(0, model.fsq.codebook_size, (b, n), device=z.device)
            random_codes = model.fsq.ids_to_codes(random_ids).to(codes.dtype)
            codes = torch.where(corrupt[..., None], random_codes, codes)
        return codes

    def condition(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        """Codes ``[B,N,d]`` -> (cond ``[B,N,D]`` with nested dropout and CFG dropout, keep_k ``[B]``)."""
        model, cfg = self.model, self.cfg
        b, n, _ = codes.shape
        keep_k = sample_k(b, n, cfg.k_sampling, codes.device)
        cond = model.decoder.condition(codes, keep_k)
        if cfg.cfg_dropout > 0:
            null = model.decoder.null_condition(b).to(cond.dtype)
            drop = torch.rand(b, device=codes.device) < cfg.cfg_dropout
            cond = torch.where(drop[:, None, None], null, cond)
        return cond, keep_k

    def loss(self, batch: dict[str, Any], step: int) -> tuple[Tensor, dict[str, Any]]:
        cfg = self.cfg
        x0 = self.latents(batch)
        b = x0.shape[0]
        cond, _ = self.condition(self.codes(x0))
        t = sample_t(b, cfg, x0.device)
        noise = torch.randn_like(x0)
        tt = t[:, None, None, None]
        x_t = tt * noise + (1 - tt) * x0
        target = noise - x0
        if self.repa_layer is None:
            v = self.model.decoder(x_t, t, cond)
            flow = F.mse_loss(v.float(), target)
            return flow, {"flow": flow.detach()}
        if "image" not in batch:
            raise InvalidInputError("REPA needs the images ('image' in the batch), not only pre-computed latents")
        v, feats = self.model.decoder(x_t, t, cond, return_features_at=self.repa_layer)
        flow = F.mse_loss(v.float(), target)
        ph, pw = self.model.config.decoder.patch_size
        grid = (x0.shape[-2] // ph, x0.shape[-1] // pw)
        from flexitok.train.features import features_on_grid

        with torch.no_grad():
            target_feats = features_on_grid(self.repa_encoder(batch["image"]), grid)  # type: ignore[misc]
        align = repa_loss(self.aux_modules["repa_projector"](feats), target_feats)
        total = flow + cfg.repa_weight * align
        return total, {"flow": flow.detach(), "repa_cos": -align.detach()}

    # ------------------------------------------------------------------ evaluation / export
    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        """Reconstruction grid PNG (rows: originals, then one row per k), per-k PSNR and (with an extractor)
        per-k Frechet distance of the reconstructions' features to the originals' (``fd_k<k>``)."""
        assert isinstance(model, FlexTok)  # the task's model or its EMA copy
        if self.eval_dataset is None or self.cfg.eval_images <= 0:
            return {}
        cfg = self.cfg
        n = min(cfg.eval_images, len(self.eval_dataset))  # type: ignore[arg-type]
        ks = list(cfg.eval_ks) if cfg.eval_ks else default_ks(model.n_registers)
        ks = [k for k in ks if 1 <= k <= model.n_registers]
        res = evaluate_reconstruction(
            model,
            self.eval_dataset,
            ks=ks,
            n_images=n,
            batch_size=n,
            decode=cfg.eval_decode,
            extractor=self.extractor,
            n_examples=n,
            progress=False,
        )
        ex = res["examples"]
        rows = [ex["original"]] + [ex[k] for k in ks]
        save_grid(rows, out_dir / f"recon_step{step:08d}.png", pad=0)
        metrics = {f"psnr_k{r['k']}": float(r["PSNR"]) for r in res["rows"]}
        if self.extractor is not None:
            metrics.update({f"fd_k{r['k']}": float(r[self.extractor.metric_name]) for r in res["rows"]})
        return metrics

    def export(self, model: nn.Module, out_dir: Path) -> None:
        """Write the final (EMA) model with ``save_pretrained`` into ``<out_dir>/model``."""
        assert isinstance(model, FlexTok)
        model.save_pretrained(Path(out_dir) / "model")


# ---------------------------------------------------------------------------------------------- the target


@dataclass
class TokenizerTrainConfig(RunConfig):
    """``flexitok train tokenizer``: model + data + optimisation + task options."""

    model: FlexTokConfig = field(default_factory=lambda: preset("tiny"))
    data: DataConfig = field(default_factory=lambda: DataConfig(kind="fashion_mnist"))
    train: TrainerConfig = field(default_factory=TrainerConfig)
    task: TokenizerTaskConfig = field(default_factory=TokenizerTaskConfig)
    eval_data: DataConfig | None = None  # reconstruction grids; None = data's test split
    latents: str | None = None  # pre-computed latent cache folder (flexitok.data.latents); replaces data
    init_from: str | None = None  # start from these FlexTok weights (fine-tuning) instead of random init

    @classmethod
    def resolve_tree(cls, tree: dict[str, Any]) -> dict[str, Any]:
        """``model.vae.scaling_factor: auto`` reads the scaling factor that ``flexitok train vae`` measured
        (``<model.vae.pretrained>/latent_stats.json``, :data:`flexitok.train.vae.LATENT_STATS`)."""
        model = tree.get("model")
        vae = model.get("vae") if isinstance(model, dict) else None
        if not isinstance(model, dict) or not isinstance(vae, dict) or vae.get("scaling_factor") != "auto":
            return tree
        folder = vae.get("pretrained")
        stats = Path(str(folder)) / "latent_stats.json" if folder else None
        if stats is None or not stats.is_file():
            raise ConfigError(
                "model.vae.scaling_factor: auto reads latent_stats.json from the folder of model.vae.pretrained "
                f"(written by `flexitok train vae`); {'no model.vae.pretrained' if stats is None else f'no {stats}'}"
            )
        try:
            factor = float(json.loads(stats.read_text())["scaling_factor"])
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{stats}: no readable scaling_factor ({e})") from None
        return {**tree, "model": {**model, "vae": {**vae, "scaling_factor": factor}}}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _check_same_architecture(model: Any, source: Any, name: str) -> None:
    """Fine-tuning: every model field but the image size must equal the source's (weights alone do not show
    e.g. a different mask mode or timestep scale)."""
    ours, theirs = _flat(model.to_dict()), _flat(source.to_dict())
    differ = [k for k in ours if k != "image_size" and not k.startswith("vae.") and ours[k] != theirs.get(k)]
    if differ:
        k = differ[0]
        raise ConfigError(
            f"init_from {name}: model.{k} = {ours[k]!r} but the checkpoint has {theirs.get(k)!r} "
            f"({len(differ)} field(s) differ: {', '.join(differ[:6])}); set model to the checkpoint's architecture"
        )


def build(cfg: TokenizerTrainConfig) -> tuple[TrainTask, Dataset]:
    """The tokenizer target: a FlexTok (random, or ``init_from`` for fine-tuning) on images or a latent cache."""
    if cfg.latents is None and tuple(cfg.model.image_size) != (cfg.data.image_size, cfg.data.image_size):
        raise ConfigError(
            f"model.image_size {tuple(cfg.model.image_size)} does not match data.image_size {cfg.data.image_size}"
        )
    src = None
    if cfg.init_from is not None:
        # A larger model.image_size than the source's (e.g. 256 -> 512): its position tables are grown first.
        src = resize_for_finetuning(FlexTok.from_pretrained(cfg.init_from), cfg.model.image_size)
        if cfg.model.vae.pretrained is None and cfg.model.vae.diffusers_config is None:
            cfg.model.vae = dataclasses.replace(src.config.vae)  # fine-tuning: the source's VAE
        cfg.model.encoder.posemb_grid = src.config.encoder.posemb_grid
        cfg.model.decoder.posemb_grid = src.config.decoder.posemb_grid
        _check_same_architecture(cfg.model, src.config, cfg.init_from)
    vae = cfg.model.vae
    if vae.kind == "diffusers" and vae.pretrained is None and vae.diffusers_config is None:
        raise ConfigError(
            "model.vae needs a stage-0 autoencoder: set model.vae.pretrained=<diffusers AutoencoderKL folder> "
            "(e.g. <out_dir>/vae of `flexitok train vae`) or model.vae.diffusers_config"
        )
    train_data, eval_ds = held_out(cfg.data, cfg.eval_data, cfg.task.eval_images, cfg.train)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = FlexTok(cfg.model)
    if src is not None:
        try:
            missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ConfigError(f"init_from {cfg.init_from}: weights do not match model.* ({e})") from None
        if unexpected or [k for k in missing if not k.startswith("vae.")]:
            raise ConfigError(
                f"init_from {cfg.init_from}: weights do not match model ({missing[:3]}, {unexpected[:3]})"
            )
    dataset = LatentCacheDataset(cfg.latents) if cfg.latents is not None else build_dataset(train_data)
    return TokenizerTask(model, cfg.task, eval_dataset=eval_ds), dataset


TARGET = TrainTarget(
    name="tokenizer",
    help="train a FlexTok tokenizer (rectified-flow decoder, nested dropout, FSQ)",
    config_class=TokenizerTrainConfig,
    build=build,
    exported=lambda cfg: Path(cfg.train.out_dir) / "model",
    export_label="model",
)
