"""Atomic writes of files and whole folders.

A reader never sees a partial file or a half-written folder: files are written to a temporary name beside the
target and renamed over it; folders are written as a sibling temporary folder and swapped into place. Files get
the permissions the process umask gives new files (typically 0644), not the 0600 of ``tempfile``.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flexitok.errors import CheckpointError, OutputError

_TMP_MARK = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Make a rename in folder ``path`` durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(target: Path) -> Path:
    # Host and pid in the name let a later save remove what a crashed process left behind (see _remove_stale).
    host = socket.gethostname().replace(".", "_").replace("-", "_") or "host"
    return target.parent / f".{target.name}{_TMP_MARK}{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any point leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    tmp = _temp_name(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL with mode 0o666: the umask decides the final permissions, as for any newly created file.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except (OSError, ValueError) as e:  # a parent that is a file, no permission, a name too long or with NUL
        raise OutputError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}") from None
    mode = os.stat(tmp).st_mode & 0o777
    try:
        write(tmp)
        os.chmod(tmp, mode)  # writers that replace the file (safetensors' save_file) leave it at 0600
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def replace_dir(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move the complete folder ``src`` to ``dst``, replacing an existing ``dst`` as a whole.

    Where the OS can (Linux ``renameat2(RENAME_EXCHANGE)``) the two folders are swapped in one step, so ``dst``
    always exists and always holds one complete folder; elsewhere ``dst`` is renamed aside first (a reader may
    briefly find no folder, never a mixed one). Concurrent callers with the same ``dst`` are safe: the last
    swap wins, every other folder is deleted.
    """
    src, dst = Path(src), Path(dst)
    for _ in range(100):
        try:
            os.rename(src, dst)  # dst absent (or an empty folder): one atomic rename
            fsync_dir(dst.parent)
            return
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise
        swapped = _exchange(src, dst)
        if swapped is True:  # src now holds the old folder
            shutil.rmtree(src, ignore_errors=True)
            fsync_dir(dst.parent)
            return
        if swapped is None:  # dst vanished meanwhile (another writer is mid-swap): retry the rename
            continue
        trash = _temp_name(dst)
        try:
            os.rename(dst, trash)
        except FileNotFoundError:
            continue
        try:
            os.rename(src, dst)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            continue  # another writer put its folder in place first: try again against that one
        finally:
            shutil.rmtree(trash, ignore_errors=True)
        fsync_dir(dst.parent)
        return
    raise CheckpointError(f"could not move {src} into place at {dst}: other processes kept replacing it")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None
if sys.platform.startswith("linux"):
    try:
        _renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        _renameat2 = None


def _exchange(a: Path, b: Path) -> bool | None:
    """Atomically swap paths ``a`` and ``b``. -> True on success, None if ``b`` does not exist, False if this
    OS or filesystem cannot swap."""
    if _renameat2 is None:
        return False
    rc = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ENOENT:
        return None
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def _remove_stale(target: Path) -> None:
    """Delete temporary siblings of ``target`` left by crashed processes of this host (never a live one's)."""
    host = socket.gethostname().replace(".", "_").replace("-", "_") or "host"
    prefix = f".{target.name}{_TMP_MARK}{host}-"
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return
    for p in siblings:
        if not p.name.startswith(prefix):
            continue
        pid = p.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def write_folder_atomically(dst: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Build a folder with ``write(tmp_folder)`` beside ``dst``, fsync its files, then swap it in as ``dst``.

    Either the old folder or the complete new one is visible at ``dst``, never a mix, even when several
    processes write ``dst`` at once or one of them crashes.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(dst)
    tmp = _temp_name(dst)
    os.mkdir(tmp)
    try:
        write(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        replace_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
