"""The training loop: AdamW + warm-up/cosine, EMA, AMP, accumulation, DDP/FSDP2, verified checkpoints, exact resume.

A run is a :class:`~flexitok.train.task.TrainTask` (the model and the loss of a batch) plus a
:class:`~flexitok.train.trainer_config.TrainerConfig`. ``train`` is torchrun-aware (see :mod:`flexitok.train.parallel`):
each process trains on its shard of every batch; rank 0 logs and publishes checkpoints. Multi-GPU::

    torchrun --nproc_per_node=8 -m flexitok train tokenizer --config configs/tokenizer-d12-d12.yaml

One update, in order: fetch ``grad_accum`` micro-batches; step the task's extra optimizers once on them (e.g. a
GAN discriminator); accumulate the main loss's gradients; clip; step AdamW and the schedule; update the EMA.
Checkpoints are written only when the losses since the last check and all weights are finite; resume is exact
(:mod:`flexitok.train.stream`, :mod:`flexitok.train.checkpointing.state`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from flexitok.errors import TrainingError, TrainingStopped
from flexitok.train.checkpointing.checkpointer import Checkpointer
from flexitok.train.checkpointing.rundir import RunDir, check_config_change
from flexitok.train.checkpointing.state import TrainState, preserve_rng
from flexitok.train.ema import EMA
from flexitok.train.metrics import MetricsLogger, MetricsWindow, as_float, import_wandb
from flexitok.train.optim import apply_config, build_optimizer, group_settings, lr_lambda, param_groups
from flexitok.train.parallel import (
    DistInfo,
    TaskModule,
    any_rank,
    apply_fsdp,
    average_gradients,
    barrier,
    full_tensor,
    init_distributed,
    wrap_ddp,
)
from flexitok.train.preemption import EXIT_STOPPED, StopOnSigterm
from flexitok.train.stream import BatchStream, batch_len, seed_everything, to_device
from flexitok.train.task import ExtraOptimizer, TrainTask
from flexitok.train.trainer_config import TrainerConfig
from flexitok.utils.config_json import plain_data

__all__ = ["TrainerConfig", "TrainTask", "lr_lambda", "param_groups", "train"]


def train(
    task: TrainTask,
    dataset: Dataset,
    cfg: TrainerConfig,
    collate_fn: Callable | None = None,
    run_config: dict[str, Any] | None = None,
) -> Path:
    """Train ``task.model`` on ``dataset``; returns the final checkpoint folder (``<out_dir>/last`` resolved).

    ``run_config``: the whole resolved run config as plain data (saved as ``config.yaml`` and compared on
    resume); defaults to ``{"train": cfg}``.
    """
    if not isinstance(task, TrainTask):
        raise TypeError(f"train() needs a flexitok.train.TrainTask subclass, got {type(task).__name__}")
    info = init_distributed(fsdp=cfg.fsdp)
    try:
        with RunDir(Path(cfg.out_dir), info) as run:
            return Trainer(task, dataset, cfg, info, run, collate_fn, run_config).fit()
    finally:
        if info.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class Trainer:
    """Set-up in ``__init__`` (device, parallelism, EMA, optimizers, resume); the loop in :meth:`fit`."""

    def __init__(
        self,
        task: TrainTask,
        dataset: Dataset,
        cfg: TrainerConfig,
        info: DistInfo,
        run: RunDir,
        collate_fn: Callable | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        self.task, self.cfg, self.info, self.run = task, cfg, info, run
        if "wandb" in cfg.trackers:
            import_wandb()  # every rank, before any work: a missing package is a clean error, not a hang
        self.out_dir, device = Path(cfg.out_dir), info.device
        if device.type == "cpu" and cfg.cpu_threads is not None:
            torch.set_num_threads(cfg.cpu_threads)
        bf16 = cfg.precision == "bf16" and (device.type == "cuda" or cfg.cpu_autocast)
        self.amp_dtype = torch.bfloat16 if bf16 else None
        self.run_config = plain_data(run_config if run_config is not None else {"train": dataclasses.asdict(cfg)})

        # Modules: the trained root (model + aux), frozen helpers, and the extra optimizers' modules.
        self.root = root = TaskModule(task).to(device)
        task.frozen_modules.to(device).eval().requires_grad_(False)
        self.extras: list[ExtraOptimizer] = task.extra_optimizers()
        for x in self.extras:
            x.module.to(device)
        if cfg.activation_checkpointing:
            fn = getattr(task.model, "set_activation_checkpointing", None)  # an optional model capability
            if fn is None:
                warnings.warn(
                    f"{type(task.model).__name__} has no set_activation_checkpointing(); flag ignored", stacklevel=2
                )
            else:
                fn(True)
        if cfg.compile:
            # In-place compile of each child keeps state_dict keys unchanged (no `_orig_mod.` prefix).
            for child in task.model.children():
                if any(p.requires_grad for p in child.parameters()):
                    child.compile()
        # Under FSDP a rank-0 copy of the unsharded model receives the gathered weights for eval / export.
        self.template = copy.deepcopy(task.model).cpu() if cfg.fsdp and info.is_main else None
        if cfg.fsdp:
            apply_fsdp(root, info)
        self.ema = EMA(task.model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None  # of the shards
        self.optimizer, self.scheduler = build_optimizer(root, cfg)
        self.ddp = wrap_ddp(root, info) if info.enabled and not cfg.fsdp else None
        self.forward: nn.Module = self.ddp if self.ddp is not None else root

        # Samples the data stream skipped (undecodable, bad labels; contract of flexitok.data.webdataset), summed
        # on the device and read only when logging. None until a batch carries the count.
        self.skipped: Tensor | None = None
        self.state = TrainState(world_size=info.world_size, batch_size=cfg.batch_size, config=self.run_config)
        self.checkpointer = Checkpointer(
            self.out_dir,
            root=root,
            task=task,
            ema=self.ema,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            extras=self.extras,
            info=info,
            fsdp=cfg.fsdp,
            keep=cfg.keep_checkpoints,
            batch_size=cfg.batch_size,
        )
        self.stream = BatchStream(
            dataset,
            cfg.batch_size,
            self.state,
            seed=cfg.seed,
            rank=info.rank,
            world_size=info.world_size,
            num_workers=cfg.num_workers,
            collate_fn=collate_fn,
            pin_memory=device.type == "cuda",
        )
        self.last, corrupt = run.resume_checkpoint(cfg.resume, cfg.resume_fallback, self.checkpointer.verify)
        if self.last is not None:
            configured = group_settings(self.optimizer)
            self.checkpointer.load(self.last, self.state)
            check_config_change(self.state.config, self.run_config, cfg.allow_config_change, self.last)
            applied = apply_config(self.optimizer, self.scheduler, configured, cfg)
            if applied and info.is_main:
                print(f"applied to the restored optimizer and schedule: {'; '.join(applied)}")
            self.state.config = self.run_config
            run.adopt(self.last, corrupt)
            if info.is_main:
                print(f"resumed from {self.last} at step {self.state.step}")
        else:
            # Distinct per-rank streams for the task's sampling (t, k, dropout); the data order has its own seeds.
            seed_everything(cfg.seed * 1000 + info.rank)
        run.write_config(self.run_config)
        note = cfg.warmup_note()
        if note is not None and info.is_main:
            print(note, file=sys.stderr)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        cfg, state, info = self.cfg, self.state, self.info
        window = MetricsWindow(cfg.grad_accum)
        logger = MetricsLogger(self.out_dir, info.is_main, state.step, cfg.trackers, self.run_config)
        pbar = tqdm(
            total=cfg.steps, initial=state.step, disable=not (info.is_main and cfg.progress), dynamic_ncols=True
        )
        self.root.train()
        try:
            with StopOnSigterm(info) as stop:
                while state.step < cfg.steps:
                    batches = [to_device(next(self.stream), info.device) for _ in range(cfg.grad_accum)]
                    self.count_skipped(batches)
                    self.step_extra_optimizers(batches, window)
                    grad_norm = self.train_step(batches, window)
                    state.step += 1
                    if self.ema is not None:
                        self.ema.update(self.task.model, state.step)
                    window.end_update(sum(batch_len(b) for b in batches))

                    if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                        self.log(window, logger, pbar, grad_norm)
                    pbar.update(1)
                    if cfg.eval_every and state.step % cfg.eval_every == 0:
                        self.evaluate(logger)
                    if state.step % cfg.ckpt_every == 0 or state.step == cfg.steps:
                        self.check_finite(window)
                        self.last = self.checkpointer.save(state)
                    if state.step < cfg.steps and stop.requested():
                        self.stop_at_step_boundary(window)
        finally:
            self.stream.close()
            pbar.close()
            logger.close()
        model = self.final_model()
        if info.is_main and model is not None:
            self.task.export(model, self.out_dir)
        barrier(info)
        assert self.last is not None
        return self.last

    def count_skipped(self, batches: list[Any]) -> None:
        for b in batches:
            if isinstance(b, dict) and isinstance(b.get("skipped"), Tensor):
                n = b["skipped"].sum()
                self.skipped = n if self.skipped is None else self.skipped + n

    def stop_at_step_boundary(self, window: MetricsWindow) -> None:
        """SIGTERM: checkpoint this step (unless just done), then stop (see :mod:`flexitok.train.preemption`)."""
        step = self.state.step
        if self.last is None or self.last.name != f"step_{step:08d}":
            self.check_finite(window)
            self.last = self.checkpointer.save(self.state)
        raise TrainingStopped(
            f"stopped by SIGTERM after step {step} of {self.cfg.steps}; checkpoint {self.last} written. "
            f"Continue with --resume (exit code {EXIT_STOPPED})"
        )

    def train_step(self, batches: list[Any], window: MetricsWindow) -> Tensor:
        """Accumulate the main loss over the micro-batches, clip, step AdamW and the schedule; -> grad norm."""
        cfg, step = self.cfg, self.state.step
        self.optimizer.zero_grad(set_to_none=True)
        for micro, batch in enumerate(batches):
            last = micro == len(batches) - 1
            with self._grad_sync(last):
                with torch.autocast(self.info.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    loss, logs = self.forward(batch, step)
                (loss / cfg.grad_accum).backward()
            window.add_micro_batch(loss, logs)
        grad_norm = (
            nn.utils.clip_grad_norm_(self.root.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else torch.tensor(0.0)
        )
        self.optimizer.step()
        self.scheduler.step()
        return grad_norm

    def _grad_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """Reduce gradients over processes only on the last micro-batch of an update."""
        if self.ddp is not None and not sync:
            return self.ddp.no_sync()
        if self.cfg.fsdp and self.info.enabled:
            from torch.distributed.fsdp import FSDPModule

            assert isinstance(self.root, FSDPModule)  # fully_shard swaps the root's class in place
            self.root.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def step_extra_optimizers(self, batches: list[Any], window: MetricsWindow) -> None:
        """One update of each extra optimizer on this update's micro-batches (see :class:`ExtraOptimizer`)."""
        for x in self.extras:
            x.optimizer.zero_grad(set_to_none=True)
            active = False
            with preserve_rng():  # the main loss then draws the same randomness
                for batch in batches:
                    with torch.autocast(
                        self.info.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
                    ):
                        loss, x_logs = x.loss(batch, self.state.step)
                    if loss is None:
                        continue
                    active = True
                    (loss / self.cfg.grad_accum).backward()
                    window.add_logs(x_logs)
            if active:
                average_gradients(x.module, self.info)
                x.optimizer.step()

    # ------------------------------------------------------------------ logging, checks, evaluation
    def log(self, window: MetricsWindow, logger: MetricsLogger, pbar: Any, grad_norm: Tensor) -> None:
        loss, images_per_s, logs = window.summary(self.info)
        if not math.isfinite(loss):
            raise self._diverged(f"the loss is {loss}")
        metrics: dict[str, float] = {
            "loss": loss,
            "lr": float(self.scheduler.get_last_lr()[0]),
            "grad_norm": as_float(full_tensor(grad_norm)),
            "images_per_s": images_per_s,
            "epoch": self.state.epoch,
            **logs,
        }
        if self.skipped is not None:  # the same on every process: the data kind decides whether batches carry it
            skipped = self.skipped.detach().to(self.info.device, torch.float64).reshape(1)
            if self.info.enabled:
                dist.all_reduce(skipped)
            metrics["data/skipped"] = float(skipped.item())  # since this launch, all processes
        logger.log(self.state.step, metrics)
        pbar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.1f}")

    def check_finite(self, window: MetricsWindow) -> None:
        """Refuse to checkpoint a diverged state: every loss since the last check and every weight finite."""
        if not window.loss_is_finite(self.info):
            raise self._diverged("a loss since the last checkpoint is not finite")
        tensors = [p.detach() for p in self.root.parameters()]
        tensors += [p.detach() for x in self.extras for p in x.module.parameters()]
        tensors += list(self.ema.shadow.values()) if self.ema is not None else []
        local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
        ok = bool(torch.stack([torch.isfinite(t).all() for t in local]).all()) if local else True
        if any_rank(not ok, self.info):
            raise self._diverged("the weights contain NaN or inf")

    def _diverged(self, what: str) -> TrainingError:
        kept = f"the last checkpoint ({self.last}) is intact" if self.last is not None else "no checkpoint was written"
        return TrainingError(
            f"training diverged at step {self.state.step}: {what}; {kept}. Lower train.lr, raise train.warmup_steps "
            "or check the data, then resume"
        )

    def final_model(self) -> nn.Module | None:
        """The model to evaluate / export: EMA weights if enabled. Collective under FSDP; None on ranks > 0 there."""
        if not self.cfg.fsdp:
            return self.ema.averaged_model(self.task.model) if self.ema is not None else self.task.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        full = {k[len("model.") :]: v for k, v in full.items() if k.startswith("model.")}
        ema = {k: full_tensor(v).cpu() for k, v in self.ema.shadow.items()} if self.ema is not None else {}
        if not self.info.is_main or self.template is None:
            return None
        self.template.load_state_dict({**full, **ema})
        return self.template.to(self.info.device)

    def evaluate(self, logger: MetricsLogger) -> None:
        model = self.final_model()
        if self.info.is_main and model is not None:
            was_training = model.training
            model.eval()
            with preserve_rng(), torch.no_grad():
                metrics = self.task.evaluate(model, self.state.step, self.out_dir / "eval")
            model.train(was_training)
            if metrics:
                logger.log(self.state.step, {f"eval/{k}": float(v) for k, v in metrics.items()})
        barrier(self.info)
