"""Entry points behind ``flexitok train <target>``: config -> datasets, model, task -> :func:`train`.

Each target is a function ``(TargetArgs) -> int`` that reads its :class:`~flexitok.train.config.RunConfig` with
:func:`~flexitok.train.config.load_run_config` (the one parser of every target). New targets register in
:data:`flexitok.cli.train.TRAIN_TARGETS`; :func:`apply_target_args`, :func:`prepare_out_dir` and
:func:`eval_split` are reusable.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from flexitok.data import DataConfig, DatasetError, build_dataset
from flexitok.errors import CheckpointError
from flexitok.train.checkpointing.files import resolve_last
from flexitok.train.config import (
    ConfigError,
    TokenizerTrainConfig,
    VAETrainConfig,
    config_to_dict,
    load_run_config,
)
from flexitok.train.options import TrainConfig
from flexitok.train.trainer import train


@dataclass
class TargetArgs:
    config: str | None
    overrides: list[str] = field(default_factory=list)
    resume: bool = False
    no_fallback: bool = False  # a corrupt `last` is an error instead of a fall-back to an older checkpoint
    allow_config_change: bool = False


def apply_target_args(train_cfg: TrainConfig, args: TargetArgs) -> None:
    """The command-line resume flags on top of the config's ``train`` section."""
    train_cfg.resume = train_cfg.resume or args.resume
    train_cfg.resume_fallback = train_cfg.resume_fallback and not args.no_fallback
    train_cfg.allow_config_change = train_cfg.allow_config_change or args.allow_config_change


def prepare_out_dir(train_cfg: TrainConfig) -> None:
    """Refuse early (before building models and data) to clobber an existing run without --resume.

    The trainer locks the folder, re-checks this and writes ``config.yaml``.
    """
    out = Path(train_cfg.out_dir)
    try:
        last = resolve_last(out)
    except CheckpointError:
        return  # a dangling `last`: the trainer's resume logic reports or repairs it
    if last is not None and not train_cfg.resume:
        raise CheckpointError(f"{out} already holds a checkpoint ({last.name}); pass --resume or change train.out_dir")


def eval_split(data: DataConfig, eval_data: DataConfig | None, n: int) -> Any:
    """The evaluation dataset: ``eval_data`` if given, else the test split of ``data`` without augmentation."""
    if n <= 0:
        return None
    cfg = eval_data or dataclasses.replace(data, split="test", random_resized_crop=None, hflip=False, limit=n)
    try:
        return build_dataset(cfg)
    except DatasetError:  # e.g. an image folder without a test split: evaluate on training images
        return build_dataset(dataclasses.replace(cfg, split="train"))


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


def run_tokenizer(args: TargetArgs) -> int:
    from flexitok.models.flextok import FlexTok
    from flexitok.models.resize import resize_for_finetuning
    from flexitok.train.tokenizer import TokenizerTask

    cfg = load_run_config(TokenizerTrainConfig, args.config, args.overrides)
    apply_target_args(cfg.train, args)
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
    prepare_out_dir(cfg.train)
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
    dataset: Dataset
    if cfg.latents is not None:
        from flexitok.data import LatentCacheDataset

        dataset = LatentCacheDataset(cfg.latents)
    else:
        dataset = build_dataset(cfg.data)
    eval_ds = eval_split(cfg.data, cfg.eval_data, cfg.task.eval_images) if cfg.train.eval_every else None
    task = TokenizerTask(model, cfg.task, eval_dataset=eval_ds)
    path = train(task, dataset, cfg.train, run_config=config_to_dict(cfg))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {path}\nmodel: {Path(cfg.train.out_dir) / 'model'}")
    return 0


def run_vae(args: TargetArgs) -> int:
    from flexitok.train.vae import VAETask, build_autoencoder

    cfg = load_run_config(VAETrainConfig, args.config, args.overrides)
    apply_target_args(cfg.train, args)
    if cfg.data.image_size % cfg.model.downsample:
        raise ConfigError(
            f"data.image_size {cfg.data.image_size} is not divisible by the VAE downsampling {cfg.model.downsample}"
        )
    prepare_out_dir(cfg.train)
    torch.manual_seed(cfg.train.seed)
    vae = build_autoencoder(cfg.model)
    dataset = build_dataset(cfg.data)
    eval_ds = eval_split(cfg.data, cfg.eval_data, cfg.task.eval_images) if cfg.train.eval_every else None
    task = VAETask(vae, cfg.task, eval_dataset=eval_ds)
    path = train(task, dataset, cfg.train, run_config=config_to_dict(cfg))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {path}\nVAE (diffusers format): {Path(cfg.train.out_dir) / 'vae'}")
    return 0
