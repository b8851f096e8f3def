"""Entry points behind ``flexitok train <target>``: config -> datasets, model, task -> :func:`train`.

Each target is a function ``(TargetArgs) -> int``. New targets (e.g. ``generator``) register in
:data:`flexitok.cli.train.TRAIN_TARGETS`; :func:`prepare_out_dir` and :func:`eval_split` are reusable.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import Dataset

from flexitok.data import DataConfig, DatasetError, build_dataset
from flexitok.errors import CheckpointError
from flexitok.io.checkpoint import atomic_write_bytes
from flexitok.train.checkpoint import resolve_last
from flexitok.train.config import (
    ConfigError,
    TokenizerTrainConfig,
    VAETrainConfig,
    config_to_dict,
    load_run_config,
)
from flexitok.train.trainer import TrainConfig, train


@dataclass
class TargetArgs:
    config: str | None
    overrides: list[str] = field(default_factory=list)
    resume: bool = False


def prepare_out_dir(run_cfg: Any, train_cfg: TrainConfig) -> None:
    """Refuse to clobber an existing run without --resume, then save the resolved config (rank 0, atomic)."""
    out = Path(train_cfg.out_dir)
    last = resolve_last(out)
    if last is not None and not train_cfg.resume:
        raise CheckpointError(f"{out} already holds a checkpoint ({last.name}); pass --resume or change train.out_dir")
    if int(os.environ.get("RANK", "0")) != 0:
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "config.yaml", yaml.safe_dump(config_to_dict(run_cfg), sort_keys=False).encode())


def eval_split(data: DataConfig, eval_data: DataConfig | None, n: int) -> Any:
    """The evaluation dataset: ``eval_data`` if given, else the test split of ``data`` without augmentation."""
    if n <= 0:
        return None
    cfg = eval_data or dataclasses.replace(data, split="test", random_resized_crop=None, hflip=False, limit=n)
    try:
        return build_dataset(cfg)
    except DatasetError:  # e.g. an image folder without a test split: evaluate on training images
        return build_dataset(dataclasses.replace(cfg, split="train"))


def run_tokenizer(args: TargetArgs) -> int:
    from flexitok.models.flextok import FlexTok
    from flexitok.train.tokenizer import TokenizerTask

    cfg = load_run_config(TokenizerTrainConfig, args.config, args.overrides)
    cfg.train.resume = cfg.train.resume or args.resume
    if cfg.latents is None and tuple(cfg.model.image_size) != (cfg.data.image_size, cfg.data.image_size):
        raise ConfigError(
            f"model.image_size {tuple(cfg.model.image_size)} does not match data.image_size {cfg.data.image_size}"
        )
    vae = cfg.model.vae
    if vae.kind == "diffusers" and vae.pretrained is None and vae.diffusers_config is None:
        raise ConfigError(
            "model.vae needs a stage-0 autoencoder: set model.vae.pretrained=<diffusers AutoencoderKL folder> "
            "(e.g. <out_dir>/vae of `flexitok train vae`) or model.vae.diffusers_config"
        )
    prepare_out_dir(cfg, cfg.train)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = FlexTok(cfg.model)
    if cfg.init_from is not None:
        src = FlexTok.from_pretrained(cfg.init_from)
        missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
        if unexpected or [k for k in missing if not k.startswith("vae.")]:
            raise ConfigError(
                f"init_from {cfg.init_from}: weights do not match model ({missing[:3]}, {unexpected[:3]})"
            )
    dataset: Dataset
    if cfg.latents is not None:
        from flexitok.data import LatentCacheDataset

        dataset = LatentCacheDataset(cfg.latents)
    else:
        dataset = build_dataset(cfg.data)
    eval_ds = eval_split(cfg.data, cfg.eval_data, cfg.task.eval_images) if cfg.train.eval_every else None
    task = TokenizerTask(model, cfg.task, eval_dataset=eval_ds)
    path = train(task, dataset, cfg.train)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {path}\nmodel: {Path(cfg.train.out_dir) / 'model'}")
    return 0


def run_vae(args: TargetArgs) -> int:
    from flexitok.train.vae import VAETask, build_autoencoder

    cfg = load_run_config(VAETrainConfig, args.config, args.overrides)
    cfg.train.resume = cfg.train.resume or args.resume
    if cfg.data.image_size % cfg.model.downsample:
        raise ConfigError(
            f"data.image_size {cfg.data.image_size} is not divisible by the VAE downsampling {cfg.model.downsample}"
        )
    prepare_out_dir(cfg, cfg.train)
    torch.manual_seed(cfg.train.seed)
    vae = build_autoencoder(cfg.model)
    dataset = build_dataset(cfg.data)
    eval_ds = eval_split(cfg.data, cfg.eval_data, cfg.task.eval_images) if cfg.train.eval_every else None
    task = VAETask(vae, cfg.task, eval_dataset=eval_ds)
    path = train(task, dataset, cfg.train)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {path}\nVAE (diffusers format): {Path(cfg.train.out_dir) / 'vae'}")
    return 0
