"""Save and restore the whole training state: modules, EMA, optimizers, scheduler and :class:`TrainState`.

On one process or under DDP the states are gathered whole and rank 0 writes them as safetensors / ``.pt``
files. Under FSDP each rank writes its shards of the model, EMA and optimizer through
``torch.distributed.checkpoint`` into ``sharded/`` (no full gather: memory stays per-GPU), rank 0 adds the small
replicated states, and the file hashes of the manifest are computed in parallel, each rank a share of the files.
Either way the folder goes through :mod:`flexitok.train.checkpointing.files` (atomic, hashed, verified before ``last``).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from flexitok.errors import CheckpointError
from flexitok.train.checkpointing.files import (
    SHARDED,
    checkpoint_files,
    file_digest,
    finalize,
    load_checkpoint,
    new_temp_dir,
    prune_checkpoints,
    update_last_link,
    verify,
    write_states,
)
from flexitok.train.checkpointing.state import TrainState, rng_state, set_rng_state
from flexitok.train.ema import EMA
from flexitok.train.parallel import DistInfo, TaskModule
from flexitok.train.task import ExtraOptimizer, TrainTask

_RESERVED = {"model", "aux", "ema", "optimizer", "scheduler", "trainer", "task"}


def _safetensors_error() -> type[Exception]:
    try:
        from safetensors import SafetensorError

        return SafetensorError
    except ImportError:  # older safetensors: I/O errors surface as OSError
        return OSError


# What a failed write raises: OSError (ENOSPC, EFBIG, EIO, ...), torch.save's RuntimeError around it
# ("PytorchStreamWriter failed writing file"), safetensors' own error type (and, under FSDP, DCP's exception).
_WRITE_ERRORS: tuple[type[BaseException], ...] = (OSError, RuntimeError, _safetensors_error())


def _causes(e: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = e
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


class Checkpointer:
    """Every method is collective: all ranks call it."""

    def __init__(
        self,
        out_dir: Path,
        *,
        root: TaskModule,
        task: TrainTask,
        ema: EMA | None,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        extras: list[ExtraOptimizer],
        info: DistInfo,
        fsdp: bool,
        keep: int,
        batch_size: int,
    ) -> None:
        self.out_dir, self.ckpt_root = Path(out_dir), Path(out_dir) / "checkpoints"
        self.root, self.task, self.ema, self.optimizer, self.scheduler = root, task, ema, optimizer, scheduler
        self.extras, self.info, self.fsdp, self.keep, self.batch_size = extras, info, fsdp, keep, batch_size
        for x in extras:
            if x.name in _RESERVED or not x.name.isidentifier():
                raise ValueError(f"extra optimizer name {x.name!r} must be an identifier other than {_RESERVED}")

    # ------------------------------------------------------------------ what is saved
    def _sharded_state(self) -> dict[str, Any]:
        """FSDP: the DTensor states DCP writes and reads in place (EMA shadows are sharded like the params)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        state: dict[str, Any] = {
            "model": get_model_state_dict(self.root),
            "optimizer": get_optimizer_state_dict(self.root, self.optimizer),
        }
        if self.ema is not None:
            state["ema"] = self.ema.shadow
        return state

    def _full_states(self, state: TrainState) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        objects: dict[str, Any] = {}
        if not self.fsdp:
            tensors["model"] = self.task.model.state_dict()
            if len(self.root.aux):
                tensors["aux"] = self.root.aux.state_dict()
            if self.ema is not None:
                tensors["ema"] = self.ema.state_dict()
            objects["optimizer"] = self.optimizer.state_dict()
        for x in self.extras:
            tensors[x.name] = x.module.state_dict()
            objects[f"optimizer_{x.name}"] = x.optimizer.state_dict()
        objects["scheduler"] = self.scheduler.state_dict()
        objects["trainer"] = state.state_dict()
        task_state = self.task.extra_state()
        if task_state:
            objects["task"] = task_state
        return tensors, objects

    # ------------------------------------------------------------------ save
    def save(self, state: TrainState) -> Path:
        """Write ``checkpoints/step_<step>`` and point ``last`` at it; returns the folder.

        A write that fails (disk full, a file-size limit, an I/O error) raises :class:`CheckpointError` on every
        rank; the partial folder is removed and ``last`` still points at the previous, intact checkpoint.
        """
        info = self.info
        rng = rng_state()
        rngs: list[Any] = [None] * info.world_size
        if info.enabled:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        state.rng = rngs
        path = self.ckpt_root / f"step_{state.step:08d}"
        box: list[Any] = [None, None]
        if info.is_main:
            try:
                box[0] = new_temp_dir(path)
            except _WRITE_ERRORS as e:
                box[1] = self._write_failed(path, e)
        if info.enabled:
            dist.broadcast_object_list(box, src=0)
        if box[1] is not None:
            raise CheckpointError(box[1])
        tmp: Path = box[0]
        try:
            if self.fsdp:
                import torch.distributed.checkpoint as dcp
                from torch.distributed.checkpoint.api import CheckpointException

                sharded_errors: tuple[type[BaseException], ...] = (*_WRITE_ERRORS, CheckpointException)
                try:
                    dcp.save(self._sharded_state(), checkpoint_id=str(tmp / SHARDED))
                except sharded_errors as e:
                    error: str | None = self._write_failed(path, e)
                else:
                    error = None
                self._raise_on_any_rank(error)
            tensors, objects = self._full_states(state)
            error = None
            if info.is_main:
                try:
                    write_states(tmp, tensors, objects)
                except _WRITE_ERRORS as e:
                    error = self._write_failed(path, e)
            self._raise_on_any_rank(error)
            digests: dict[str, str] = {}
            if self.fsdp and info.enabled:  # hash the (large) shard files in parallel
                files = checkpoint_files(tmp)
                mine = {f: file_digest(tmp / f) for f in files[info.rank :: info.world_size]}
                parts: list[Any] = [None] * info.world_size
                dist.all_gather_object(parts, mine)
                digests = {k: v for part in parts for k, v in part.items()}
            error = None
            if info.is_main:
                try:
                    finalize(tmp, path, meta={"step": state.step}, digests=digests)
                    update_last_link(self.out_dir / "last", path)
                except _WRITE_ERRORS as e:
                    error = self._write_failed(path, e)
                else:
                    prune_checkpoints(self.ckpt_root, self.keep, protect=path)
            self._raise_on_any_rank(error)
        except BaseException:
            if info.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    def _raise_on_any_rank(self, error: str | None) -> None:
        """Collective: the first rank's error (or None) on every rank, raised as CheckpointError (no rank hangs)."""
        if self.info.enabled:
            errors: list[Any] = [None] * self.info.world_size
            dist.all_gather_object(errors, error)
            error = next((e for e in errors if e is not None), None)
        if error is not None:
            raise CheckpointError(error)

    def _write_failed(self, path: Path, e: BaseException) -> str:
        """The message of a failed checkpoint write: what failed, and that the previous checkpoint is intact."""
        code = next((x.errno for x in _causes(e) if isinstance(x, OSError) and x.errno), None)
        if code is None:  # safetensors reports the OS error only in its message: "... (os error 28)"
            found = re.search(r"os error (\d+)", str(e))
            code = int(found.group(1)) if found else None
        hint = {
            errno.ENOSPC: "the disk is full: free space",
            errno.EDQUOT: "the disk quota is exceeded: free space",
            errno.EFBIG: "a file exceeds the file-size limit (ulimit -f): raise it",
        }.get(code or -1, f"check the free space and the file-size limit (ulimit -f) for {self.ckpt_root}")
        last = self.out_dir / "last"
        previous = f"{last} -> {os.readlink(last)} is intact" if last.is_symlink() else "no earlier checkpoint exists"
        return (
            f"could not write checkpoint {path.name} ({type(e).__name__}: {e}); the partial folder was removed and "
            f"{previous}; {hint}, then resume with --resume"
        )

    # ------------------------------------------------------------------ verify / load
    def verify(self, path: Path) -> None:
        """Check every file's hash, the ranks sharing the files; the same CheckpointError on every rank."""
        info = self.info
        if not info.enabled:
            verify(path)
            return
        error = None
        try:
            verify(path, part=(info.rank, info.world_size))
        except CheckpointError as e:
            error = str(e)
        errors: list[Any] = [None] * info.world_size
        dist.all_gather_object(errors, error)
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise CheckpointError(first)

    def load(self, path: Path, state: TrainState) -> None:
        """Restore everything from a checkpoint folder :meth:`verify` has accepted."""
        ck = load_checkpoint(path, verified=True)
        if "trainer" not in ck.objects or "scheduler" not in ck.objects:
            raise CheckpointError(f"{path} is not a training checkpoint (no trainer or scheduler state)")
        state.load_state_dict(ck.objects["trainer"])
        if state.world_size != self.info.world_size or state.batch_size != self.batch_size:
            raise CheckpointError(
                f"{path} was written with world_size={state.world_size}, batch_size={state.batch_size}; resume "
                f"needs the same (got {self.info.world_size}, {self.batch_size}): the data position is per process"
            )
        if (ck.sharded is not None) != self.fsdp:
            raise CheckpointError(
                f"{path} was written with fsdp={ck.sharded is not None}; resume with the same train.fsdp"
            )
        try:
            if self.fsdp:
                self._load_sharded(ck.sharded)  # type: ignore[arg-type]
            else:
                self._load_full(ck.tensors, ck.objects, path)
            self.scheduler.load_state_dict(ck.objects["scheduler"])
            legacy = ck.objects.get("task", {})  # 0.1.0 kept a discriminator in the task state
            for x in self.extras:
                weights = ck.tensors.get(x.name, legacy.get(x.name))
                opt = ck.objects.get(f"optimizer_{x.name}", legacy.get(f"{x.name}_opt"))
                if weights is None or opt is None:
                    raise CheckpointError(f"{path} has no state for the task's {x.name!r} optimizer")
                x.module.load_state_dict(weights)
                x.optimizer.load_state_dict(opt)
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{path} does not match the model being trained: {e}") from e
        self.task.load_extra_state(ck.objects.get("task", {}))
        set_rng_state(state.rng[self.info.rank])

    def _load_full(self, tensors: dict[str, Any], objects: dict[str, Any], path: Path) -> None:
        if "model" not in tensors or "optimizer" not in objects:
            raise CheckpointError(f"{path} has no model weights or optimizer state")
        self.task.model.load_state_dict(tensors["model"])
        if len(self.root.aux):
            self.root.aux.load_state_dict(tensors.get("aux", {}))
        if self.ema is not None:
            if "ema" not in tensors:
                raise CheckpointError(f"{path} has no EMA weights but train.ema_decay > 0")
            self.ema.load_state_dict(tensors["ema"])
        self.optimizer.load_state_dict(objects["optimizer"])

    def _load_sharded(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        sharded = self._sharded_state()
        dcp.load(sharded, checkpoint_id=str(folder))  # in place, each rank its own shards
        set_model_state_dict(self.root, sharded["model"])
        set_optimizer_state_dict(self.root, self.optimizer, sharded["optimizer"])
