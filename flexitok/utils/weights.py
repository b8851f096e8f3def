"""safetensors weight files: atomic saving, header inspection without reading data, strict state-dict loading."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from flexitok.errors import CheckpointError
from flexitok.utils.files import atomic_write


def safetensors_ready(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Independent contiguous CPU copies: safetensors refuses shared or non-contiguous storage."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def save_safetensors(
    tensors: dict[str, Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """Save contiguous CPU copies of ``tensors`` atomically (shared storage is duplicated, as safetensors needs)."""
    clean = safetensors_ready(tensors)
    atomic_write(path, lambda p: save_file(clean, str(p), metadata=metadata))


def _open_error(path: Path, e: Exception) -> CheckpointError:
    return CheckpointError(f"cannot read {path}: the file is truncated or not a safetensors checkpoint ({e})")


@dataclass(frozen=True)
class WeightsHeader:
    """What a safetensors header says, read without touching the tensor data."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]  # safetensors dtype names: "F32", "BF16", "I64", ...
    metadata: dict[str, str]

    @property
    def numel(self) -> int:
        total = 0
        for shape in self.shapes.values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total


class WeightsFile:
    """An open safetensors file: its :attr:`header` at once, the tensors on demand, both from the same file even
    if the path is replaced meanwhile (use as a context manager)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"checkpoint file not found: {self.path}")
        try:
            # safetensors opens its path more than once (header, then mmap); through /proc/self/fd every open
            # reaches the file opened here, even if a concurrent save swaps the path meanwhile.
            self._fh = open(self.path, "rb")
            pinned = Path(f"/proc/self/fd/{self._fh.fileno()}")
            self._cm = safe_open(str(pinned if pinned.exists() else self.path), framework="pt")
            self._f = self._cm.__enter__()
            shapes: dict[str, tuple[int, ...]] = {}
            dtypes: dict[str, str] = {}
            for k in self._f.keys():
                sl = self._f.get_slice(k)
                shapes[k] = tuple(int(s) for s in sl.get_shape())
                dtypes[k] = str(sl.get_dtype())
            self.header = WeightsHeader(shapes, dtypes, dict(self._f.metadata() or {}))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            if hasattr(self, "_fh"):
                self._fh.close()
            raise _open_error(self.path, e) from e

    def tensors(self) -> dict[str, Tensor]:
        try:
            return {k: self._f.get_tensor(k) for k in self.header.shapes}
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise _open_error(self.path, e) from e

    def close(self) -> None:
        self._cm.__exit__(None, None, None)
        self._fh.close()

    def __enter__(self) -> WeightsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_safetensors_header(path: str | os.PathLike[str]) -> WeightsHeader:
    """Tensor names, shapes, dtypes and metadata of a safetensors file (the data is not read)."""
    with WeightsFile(path) as f:
        return f.header


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read all tensors and the header metadata; a missing, truncated or corrupt file raises CheckpointError."""
    with WeightsFile(path) as f:
        return f.tensors(), f.header.metadata


def state_dict_problems(own: dict[str, tuple[int, ...]], given: dict[str, tuple[int, ...]]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches between the model's and a checkpoint's shapes."""
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    mismatched = [
        f"{k}: checkpoint {given[k]} vs model {own[k]}" for k in sorted(set(own) & set(given)) if given[k] != own[k]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:5]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[:3]})")
    return problems


def load_state_dict_strict(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``module``; missing/unexpected keys or shape mismatches raise CheckpointError."""
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    problems = state_dict_problems(own, {k: tuple(v.shape) for k, v in state.items()})
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    with torch.no_grad():
        module.load_state_dict(state, strict=True)
