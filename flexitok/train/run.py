"""The one runner behind ``flexitok train <target>``: run config -> task and dataset -> :func:`train`.

A training target is a :class:`TrainTarget`: its run-config class (a :class:`~flexitok.train.config.RunConfig`
read by :func:`~flexitok.train.config.load_run_config`, the one parser of every target) and how it builds its
task (model, loss, evaluation, export) and dataset. Each target module of ``flexitok.train`` (``tokenizer``,
``vae``, ``generator``, ``classifier``) defines one as ``TARGET``; :func:`run_target` runs any of them. A new
target is a module with a ``TARGET`` plus one import in ``flexitok.cli.train``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from torch.utils.data import Dataset

from flexitok.data import DataConfig
from flexitok.errors import CheckpointError
from flexitok.train.checkpointing.files import resolve_last
from flexitok.train.config import RunConfig, config_to_dict, load_run_config
from flexitok.train.heldout import held_out_data
from flexitok.train.task import TrainTask
from flexitok.train.trainer import train
from flexitok.train.trainer_config import TrainerConfig

C = TypeVar("C", bound=RunConfig)


@dataclass(frozen=True)
class TrainTarget(Generic[C]):
    """What ``flexitok train <name>`` trains.

    ``build(cfg)`` runs after the output folder was checked: it validates ``cfg`` (it may complete it, e.g. the
    VAE of a fine-tuning source), seeds ``cfg.train.seed`` and returns ``(task, training dataset)``; the task's
    ``export`` writes ``exported(cfg)`` at the end.
    """

    name: str
    help: str
    config_class: type[C]
    build: Callable[[C], tuple[TrainTask, Dataset]]
    exported: Callable[[C], Path]  # where the task's export writes the final model
    export_label: str


@dataclass
class TargetArgs:
    config: str | None
    overrides: list[str] = field(default_factory=list)
    resume: bool = False
    no_fallback: bool = False  # a corrupt `last` is an error instead of a fall-back to an older checkpoint
    allow_config_change: bool = False


def apply_target_args(train_cfg: TrainerConfig, args: TargetArgs) -> None:
    """The command-line resume flags on top of the config's ``train`` section."""
    train_cfg.resume = train_cfg.resume or args.resume
    train_cfg.resume_fallback = train_cfg.resume_fallback and not args.no_fallback
    train_cfg.allow_config_change = train_cfg.allow_config_change or args.allow_config_change


def prepare_out_dir(train_cfg: TrainerConfig) -> None:
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


def held_out(
    data: DataConfig, eval_data: DataConfig | None, n: int, train_cfg: TrainerConfig
) -> tuple[DataConfig, Any]:
    """(training data config, fixed evaluation set or None): :func:`flexitok.train.heldout.held_out_data`, with
    the choice printed once at start."""
    train_data, eval_ds = held_out_data(data, eval_data, n, train_cfg.eval_every > 0)
    if eval_ds is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"evaluation every {train_cfg.eval_every} steps on {eval_ds.description}", flush=True)
    return train_data, eval_ds


def run_config(target: TrainTarget[C], cfg: C) -> Path:
    """Train ``target`` with the typed run config ``cfg``; returns the final checkpoint folder."""
    train_cfg: TrainerConfig = cfg.train  # type: ignore[attr-defined]
    prepare_out_dir(train_cfg)
    task, dataset = target.build(cfg)
    path = train(task, dataset, train_cfg, run_config=config_to_dict(cfg))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {path}\n{target.export_label}: {target.exported(cfg)}")
    return path


def run_target(target: TrainTarget[Any], args: TargetArgs) -> int:
    """``flexitok train <target> --config FILE [--resume] [section.key=value ...]``."""
    cfg = load_run_config(target.config_class, args.config, args.overrides)
    apply_target_args(cfg.train, args)
    run_config(target, cfg)
    return 0
