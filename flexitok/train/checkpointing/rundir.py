"""The run folder ``out_dir``: one run at a time (a lock), crash leftovers removed, which checkpoint to resume.

* ``<out_dir>/train.lock`` is held (``flock``) by rank 0 for the whole run; a second run on the same folder
  stops with a clear error before writing anything. The lock dies with its process, so ``kill -9`` never
  leaves a stale lock behind.
* Temporary folders of interrupted checkpoint writes (``checkpoints/.tmp-step_*``) are removed at start.
* Resume takes ``last`` if it verifies; a corrupt ``last`` falls back to the newest intact checkpoint with a
  warning (newer corrupt folders are moved aside to ``checkpoints/corrupt-*``), or refuses without fallback.
* Resuming with hyperparameters that differ from the checkpoint's lists the changed keys and needs
  ``allow_config_change``.
"""

from __future__ import annotations

import fcntl
import os
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import torch.distributed as dist
import yaml

from flexitok.errors import CheckpointError, TrainingError
from flexitok.train.checkpointing.files import remove_stale_temp, resolve_last, step_folders, update_last_link
from flexitok.train.parallel import DistInfo, barrier
from flexitok.train.trainer_config import OPERATIONAL_FIELDS
from flexitok.utils.config_json import plain_data
from flexitok.utils.files import atomic_write_bytes

LOCK = "train.lock"


class RunDir:
    """Context manager owning ``out_dir`` for one run (collective: every rank enters it)."""

    def __init__(self, out_dir: Path, info: DistInfo) -> None:
        self.out_dir, self.info = Path(out_dir), info
        self.ckpt_root = self.out_dir / "checkpoints"
        self._fd: int | None = None

    def __enter__(self) -> RunDir:
        error = None
        if self.info.is_main:
            error = self._lock()
        if self.info.enabled:
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise TrainingError(error)
        if self.info.is_main:
            for p in remove_stale_temp(self.out_dir):
                print(f"removed {p} (left by an interrupted run)")
        barrier(self.info)
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _lock(self) -> str | None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            return (
                f"{self.out_dir} is in use by another training run (pid {holder}, lock {path}); "
                "wait for it to finish or choose another train.out_dir"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return None

    # ------------------------------------------------------------------ resume
    def resume_checkpoint(
        self, resume: bool, fallback: bool, verify_fn: Callable[[Path], Any]
    ) -> tuple[Path | None, list[Path]]:
        """(the verified checkpoint to resume from or None for a fresh run, newer corrupt folders to set aside).

        Collective through ``verify_fn``. A folder with checkpoints needs ``resume``; a corrupt ``last`` falls
        back (``fallback``) to the newest checkpoint that verifies. Nothing is changed on disk here: call
        :meth:`adopt` once the checkpoint has been loaded.
        """
        try:
            last = resolve_last(self.out_dir)
            problem = None
        except CheckpointError as e:  # a dangling link
            last, problem = None, e
        folders = step_folders(self.ckpt_root)
        if last is None and problem is None:
            if not folders:
                return None, []
            problem = CheckpointError(f"{self.out_dir / 'last'} is missing")
        if not resume:
            held = last.name if last is not None else folders[-1].name if folders else "a checkpoint"
            raise CheckpointError(
                f"{self.out_dir} already holds a checkpoint ({held}); pass --resume to continue it or choose "
                "another out_dir"
            )
        if last is not None:
            try:
                verify_fn(last)
                return last, []
            except CheckpointError as e:
                problem = e
        if not fallback:
            raise CheckpointError(f"the last checkpoint is unusable: {problem}; refusing to fall back (--no-fallback)")
        corrupt = [last] if last is not None else []
        for folder in reversed(folders):
            if last is not None and folder.resolve() == last.resolve():
                continue
            try:
                verify_fn(folder)
            except CheckpointError:
                corrupt.append(folder)
                continue
            warnings.warn(
                f"the last checkpoint is unusable ({problem}); resuming from {folder.name}, the newest intact one",
                stacklevel=2,
            )
            return folder, [c for c in corrupt if c.name > folder.name]
        raise CheckpointError(f"no intact checkpoint in {self.ckpt_root} to resume from ({problem})")

    def adopt(self, folder: Path, corrupt: list[Path]) -> None:
        """Make ``folder`` the run's ``last`` and move newer corrupt folders out of the ``step_*`` rotation."""
        if self.info.is_main and (corrupt or resolve_last_or_none(self.out_dir) != folder.resolve()):
            for bad in corrupt:
                bad.rename(bad.parent / f"corrupt-{bad.name}-{uuid.uuid4().hex[:6]}")
            update_last_link(self.out_dir / "last", folder)
        barrier(self.info)

    # ------------------------------------------------------------------ config
    def write_config(self, config: dict[str, Any]) -> None:
        """Save the resolved run config as ``config.yaml`` (rank 0, atomic)."""
        if self.info.is_main:
            atomic_write_bytes(self.out_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())


def resolve_last_or_none(out_dir: Path) -> Path | None:
    try:
        return resolve_last(out_dir)
    except CheckpointError:
        return None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _operational(key: str) -> bool:
    section, _, rest = key.partition(".")
    leaf = key.rsplit(".", 1)[-1]
    return (
        (section == "train" and rest in OPERATIONAL_FIELDS)
        or section == "eval_data"
        or leaf.startswith("eval_")  # evaluation settings never change what is trained
    )


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"section.key: old -> new"`` for every hyperparameter that differs (sections the old config lacks, and
    operational settings such as logging, checkpoint cadence or evaluation, are not compared)."""
    a, b = _flatten(plain_data(old)), _flatten(plain_data(new))
    sections = {k.split(".", 1)[0] for k in a}
    changes = []
    for key in sorted(set(a) | set(b)):
        if key.split(".", 1)[0] not in sections or _operational(key):
            continue
        va, vb = a.get(key, "<unset>"), b.get(key, "<unset>")
        if va != vb:
            changes.append(f"{key}: {va!r} -> {vb!r}")
    return changes


def check_config_change(old: dict[str, Any], new: dict[str, Any], allow: bool, where: Path) -> None:
    changes = config_changes(old, new)
    if not changes:
        return
    listing = "; ".join(changes)
    if not allow:
        raise TrainingError(
            f"resuming {where} with changed hyperparameters ({listing}); pass --allow-config-change to continue "
            "with the new values, or resume with the checkpoint's"
        )
    warnings.warn(f"resuming with changed hyperparameters: {listing}", stacklevel=2)
