"""Atomic training checkpoints.

A checkpoint is a folder ``<out_dir>/checkpoints/step_XXXXXXXX/`` holding

* ``<name>.safetensors`` for every tensor dict (model weights, EMA weights, auxiliary modules),
* ``<name>.pt`` for every other state (optimizer, scheduler, RNG states, data position, config) via ``torch.save``,
* ``manifest.json`` (written last) listing every file with its byte size.

The folder is first written under a temporary name in the same parent (each file fsync'ed), then renamed into
place with ``os.replace``; ``<out_dir>/last`` is a symlink that is swapped atomically afterwards. A crash at any
point therefore leaves the previous checkpoint and ``last`` intact, and a truncated or corrupted file is caught
on load (size check + parser errors) and reported as :class:`~flexitok.errors.CheckpointError`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from flexitok.errors import CheckpointError
from flexitok.io.checkpoint import replace_dir, safetensors_ready

FORMAT = "flexitok-train-v1"
MANIFEST = "manifest.json"


@dataclass
class LoadedCheckpoint:
    path: Path
    tensors: dict[str, dict[str, torch.Tensor]]  # file stem -> state dict (from safetensors)
    objects: dict[str, Any]  # file stem -> torch.load'ed object
    meta: dict[str, Any]


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    ckpt_dir: Path,
    tensors: dict[str, dict[str, torch.Tensor]],
    objects: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """Write a checkpoint folder atomically and return its path."""
    ckpt_dir = Path(ckpt_dir)
    parent = ckpt_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{ckpt_dir.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files: dict[str, int] = {}
        for name, state in tensors.items():
            path = tmp / f"{name}.safetensors"
            save_file(safetensors_ready(state), str(path))
            _fsync_file(path)
            files[path.name] = path.stat().st_size
        for name, obj in objects.items():
            path = tmp / f"{name}.pt"
            with open(path, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            files[path.name] = path.stat().st_size
        manifest = {"format": FORMAT, "files": files, "meta": meta}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        replace_dir(tmp, ckpt_dir)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ckpt_dir


def update_last_link(link: Path, target: Path) -> None:
    """Point ``link`` (a symlink) at ``target`` atomically (relative link, so the run folder can be moved)."""
    link = Path(link)
    tmp = link.parent / f".tmp-link-{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def load_checkpoint(ckpt_dir: Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Read and verify a checkpoint folder; any missing, truncated or corrupt file raises CheckpointError."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint folder {ckpt_dir} does not exist")
    manifest_path = ckpt_dir / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {ckpt_dir} has no {MANIFEST}: it is incomplete (interrupted write?)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint manifest {manifest_path} is corrupt: {e}") from e
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {ckpt_dir} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    objects: dict[str, Any] = {}
    for fname, size in manifest["files"].items():
        path = ckpt_dir / fname
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing")
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointError(f"checkpoint file {path} is truncated or corrupt: {actual} bytes, expected {size}")
        stem = path.name.split(".")[0]
        try:
            if fname.endswith(".safetensors"):
                tensors[stem] = load_file(str(path), device=str(map_location))
            else:
                objects[stem] = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # parser errors differ per format; all mean the file is unusable
            raise CheckpointError(f"checkpoint file {path} could not be read ({type(e).__name__}: {e})") from e
    return LoadedCheckpoint(path=ckpt_dir, tensors=tensors, objects=objects, meta=manifest.get("meta", {}))


def resolve_last(out_dir: Path) -> Path | None:
    """The checkpoint folder ``<out_dir>/last`` points to, or None when there is none yet."""
    link = Path(out_dir) / "last"
    if not link.exists():
        if link.is_symlink():
            raise CheckpointError(f"{link} points to a missing checkpoint ({os.readlink(link)})")
        return None
    return link.resolve()


def prune_checkpoints(ckpt_root: Path, keep: int, protect: Path | None = None) -> None:
    """Delete all but the ``keep`` newest ``step_*`` folders (never ``protect``)."""
    if keep <= 0:
        return
    folders = sorted(p for p in Path(ckpt_root).glob("step_*") if p.is_dir())
    for p in folders[:-keep]:
        if protect is not None and p.resolve() == Path(protect).resolve():
            continue
        shutil.rmtree(p, ignore_errors=True)
