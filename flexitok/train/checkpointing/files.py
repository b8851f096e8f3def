"""The training-checkpoint folder: atomic, content-hashed, verified before it becomes ``last``.

A checkpoint is a folder ``<out_dir>/checkpoints/step_XXXXXXXX/`` holding

* ``<name>.safetensors`` for every full tensor dict (model weights, EMA weights, auxiliary modules),
* ``<name>.pt`` for every other state (optimizer, scheduler, RNG states, data position, config) via ``torch.save``,
* ``sharded/`` (FSDP runs) with the ``torch.distributed.checkpoint`` files of the sharded states,
* ``manifest.json`` (written last): every file's byte size and SHA-256, and a SHA-256 of the manifest itself.

The folder is written under a temporary name in the same parent (each file fsync'ed), verified against its
manifest, renamed into place with ``os.replace``, and only then does the ``<out_dir>/last`` symlink move to it.
A crash at any point leaves the previous checkpoint and ``last`` intact; any changed byte in any file
(manifest included) is caught on load and reported as :class:`~flexitok.errors.CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from flexitok.errors import CheckpointError
from flexitok.utils.files import fsync_dir, replace_dir
from flexitok.utils.weights import safetensors_ready

FORMAT = "flexitok-train-v2"
FORMAT_V1 = "flexitok-train-v1"  # 0.1.0: byte sizes only
MANIFEST = "manifest.json"
SHARDED = "sharded"  # sub-folder of torch.distributed.checkpoint files


@dataclass
class LoadedCheckpoint:
    path: Path
    tensors: dict[str, dict[str, torch.Tensor]]  # file stem -> state dict (from safetensors)
    objects: dict[str, Any]  # file stem -> torch.load'ed object
    meta: dict[str, Any]

    @property
    def sharded(self) -> Path | None:
        """The folder of sharded (DCP) states, when the run used FSDP."""
        p = self.path / SHARDED
        return p if p.is_dir() else None


# ---------------------------------------------------------------------------------------------- files


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest_bytes(body: dict[str, Any]) -> bytes:
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


def checkpoint_files(folder: Path) -> list[str]:
    """Every file of a checkpoint folder except the manifest, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def new_temp_dir(ckpt_dir: Path) -> Path:
    """A fresh temporary folder next to ``ckpt_dir`` (same filesystem, so the final rename is atomic)."""
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir.parent / f".tmp-{ckpt_dir.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def write_states(folder: Path, tensors: dict[str, dict[str, torch.Tensor]], objects: dict[str, Any]) -> None:
    """``<name>.safetensors`` per tensor dict and ``<name>.pt`` per object, each fsync'ed."""
    for name, state in tensors.items():
        path = folder / f"{name}.safetensors"
        save_file(safetensors_ready(state), str(path))
        _fsync_file(path)
    for name, obj in objects.items():
        path = folder / f"{name}.pt"
        with open(path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())


def finalize(tmp: Path, ckpt_dir: Path, meta: dict[str, Any], digests: dict[str, str] | None = None) -> Path:
    """Write the manifest of the temp folder ``tmp`` and rename it to ``ckpt_dir`` (replacing an older folder of
    that name atomically). Files are hashed as read back from disk after their fsync, unless ``digests`` (the
    same, computed by other processes) already has them; the manifest itself is read back and checked."""
    digests = dict(digests or {})
    files = {}
    for rel in checkpoint_files(tmp):
        path = tmp / rel
        files[rel] = {"bytes": path.stat().st_size, "sha256": digests.get(rel) or file_digest(path)}
    body: dict[str, Any] = {"format": FORMAT, "files": files, "meta": meta}
    body["manifest_sha256"] = hashlib.sha256(_manifest_bytes(body)).hexdigest()
    with open(tmp / MANIFEST, "wb") as f:
        f.write(_manifest_bytes(body))
        f.flush()
        os.fsync(f.fileno())
    read_manifest(tmp)
    fsync_dir(tmp)
    replace_dir(tmp, ckpt_dir)
    fsync_dir(ckpt_dir.parent)
    return ckpt_dir


def save_checkpoint(
    ckpt_dir: Path,
    tensors: dict[str, dict[str, torch.Tensor]],
    objects: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """Write, verify and atomically publish a checkpoint folder; returns its path."""
    ckpt_dir = Path(ckpt_dir)
    tmp = new_temp_dir(ckpt_dir)
    try:
        write_states(tmp, tensors, objects)
        return finalize(tmp, ckpt_dir, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------- verification


def read_manifest(ckpt_dir: Path) -> dict[str, Any]:
    """The parsed manifest, checked byte for byte against its own SHA-256 (0.1.0 manifests: parsed only)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint folder {ckpt_dir} does not exist")
    path = ckpt_dir / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt_dir} has no {MANIFEST}: it is incomplete (interrupted write?)")
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint manifest {path} is corrupt: {e}") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"checkpoint manifest {path} is corrupt: no file list")
    fmt = manifest.get("format")
    if fmt == FORMAT_V1:
        warnings.warn(f"{ckpt_dir} predates content hashes: only file sizes are checked", stacklevel=3)
        return manifest
    if fmt != FORMAT:
        raise CheckpointError(f"checkpoint {ckpt_dir} has format {fmt!r}, expected {FORMAT!r}")
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    if _manifest_bytes(manifest) != raw or hashlib.sha256(_manifest_bytes(body)).hexdigest() != manifest.get(
        "manifest_sha256"
    ):
        raise CheckpointError(f"checkpoint manifest {path} is corrupt: it does not match its own SHA-256")
    return manifest


def verify(ckpt_dir: Path, part: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Check the files listed in the manifest for presence, size and SHA-256; ``part = (i, n)`` checks only every
    n-th file from the i-th (processes sharing the work). Returns the manifest; raises :class:`CheckpointError`
    naming the first bad file.
    """
    ckpt_dir = Path(ckpt_dir)
    manifest = read_manifest(ckpt_dir)
    files: dict[str, Any] = manifest["files"]
    i, n = part
    for rel in sorted(files)[i::n]:
        entry = files[rel]
        path = ckpt_dir / rel
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing")
        size = entry if isinstance(entry, int) else entry.get("bytes")
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointError(f"checkpoint file {path} is truncated or corrupt: {actual} bytes, expected {size}")
        if isinstance(entry, dict) and file_digest(path) != entry.get("sha256"):
            raise CheckpointError(f"checkpoint file {path} is corrupt: its SHA-256 does not match the manifest")
    return manifest


def load_checkpoint(
    ckpt_dir: Path, map_location: str | torch.device = "cpu", verified: bool = False
) -> LoadedCheckpoint:
    """Read a checkpoint folder's full states (sharded states are left to DCP); ``verified``: skip re-hashing
    a folder :func:`verify` has just checked. Any missing, changed or unreadable file raises CheckpointError."""
    ckpt_dir = Path(ckpt_dir)
    manifest = read_manifest(ckpt_dir) if verified else verify(ckpt_dir)
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    objects: dict[str, Any] = {}
    for rel in manifest["files"]:
        if "/" in rel:  # sharded states: read collectively through torch.distributed.checkpoint
            continue
        path = ckpt_dir / rel
        stem = path.name.split(".")[0]
        try:
            if rel.endswith(".safetensors"):
                tensors[stem] = load_file(str(path), device=str(map_location))
            else:
                objects[stem] = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # parser errors differ per format; all mean the file is unusable
            raise CheckpointError(f"checkpoint file {path} could not be read ({type(e).__name__}: {e})") from e
    return LoadedCheckpoint(path=ckpt_dir, tensors=tensors, objects=objects, meta=manifest.get("meta", {}))


# ---------------------------------------------------------------------------------------------- the run's folders


def update_last_link(link: Path, target: Path) -> None:
    """Point ``link`` (a symlink) at ``target`` atomically (relative link, so the run folder can be moved)."""
    link = Path(link)
    tmp = link.parent / f".tmp-link-{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def resolve_last(out_dir: Path) -> Path | None:
    """The checkpoint folder ``<out_dir>/last`` points to, or None when there is none yet."""
    link = Path(out_dir) / "last"
    if not link.exists():
        if link.is_symlink():
            raise CheckpointError(f"{link} points to a missing checkpoint ({os.readlink(link)})")
        return None
    return link.resolve()


def step_folders(ckpt_root: Path) -> list[Path]:
    """The ``step_*`` checkpoint folders, oldest first."""
    return sorted(p for p in Path(ckpt_root).glob("step_*") if p.is_dir())


def prune_checkpoints(ckpt_root: Path, keep: int, protect: Path | None = None) -> None:
    """Delete all but the ``keep`` newest ``step_*`` folders (never ``protect``)."""
    if keep <= 0:
        return
    for p in step_folders(ckpt_root)[:-keep]:
        if protect is not None and p.resolve() == Path(protect).resolve():
            continue
        shutil.rmtree(p, ignore_errors=True)


def remove_stale_temp(out_dir: Path) -> list[Path]:
    """Delete the temporary folders and links a crashed run left (only safe while holding the run's lock)."""
    removed = []
    for parent in (Path(out_dir), Path(out_dir) / "checkpoints"):
        if not parent.is_dir():
            continue
        for p in [*parent.glob(".tmp-*"), *parent.glob(".old-*")]:
            if p.is_symlink() or p.is_file():
                p.unlink()
            else:
                shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
