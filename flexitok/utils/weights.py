"""safetensors weight files: atomic saving, header inspection without reading data, strict state-dict loading."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


READ_CHUNK_BYTES = 16 << 20  # read_into's conversion buffer: large enough for few reads, small beside any model


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
            self._offsets, self._data_start = _data_offsets(self._fh)
            self._chunk: Tensor | None = None  # read_into's conversion buffer, made on first use
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            if hasattr(self, "_fh"):
                self._fh.close()
            raise _open_error(self.path, e) from e

    def tensors(self) -> dict[str, Tensor]:
        try:
            return {k: self._f.get_tensor(k) for k in self.header.shapes}
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise _open_error(self.path, e) from e

    def _read_raw(self, key: str, out: Tensor, first: int | None = None) -> None:
        """Fill the contiguous CPU tensor ``out`` (the stored dtype) with the stored bytes of ``key``: all of
        them, or with ``first`` the ``out.numel()`` elements from element ``first`` on."""
        begin, end = self._offsets[key]
        buf = out.reshape(-1).view(torch.uint8).numpy()
        start = begin + (first or 0) * out.element_size()
        if (first is None and buf.nbytes != end - begin) or start + buf.nbytes > end:
            raise _open_error(self.path, ValueError(f"tensor {key!r} spans {end - begin} bytes, not {buf.nbytes}"))
        try:
            n = os.preadv(self._fh.fileno(), [buf.data], self._data_start + start) if buf.nbytes else 0
        except OSError as e:
            raise _open_error(self.path, e) from e
        if n != buf.nbytes:
            raise _open_error(self.path, ValueError(f"tensor {key!r} ends after {n} of {buf.nbytes} bytes"))

    def _stored_dtype(self, key: str) -> torch.dtype:
        src = _ST_TORCH.get(self.header.dtypes[key])
        if src is None:
            raise CheckpointError(f"{self.path}: tensor {key!r} has the unsupported dtype {self.header.dtypes[key]}")
        return src

    def read_tensor(self, key: str, dtype: torch.dtype | None = None, device: Any = None) -> Tensor:
        """One tensor, read with plain file reads into a fresh CPU tensor (floating-point ones then cast to
        ``dtype``), then moved to ``device``.

        Not through safetensors' memory map: pages of a mapped file count in the process's resident memory until
        it is unmapped, so mapping a 10 GB file while building a 10 GB model peaks at twice the weights.
        """
        out = torch.empty(self.header.shapes[key], dtype=self._stored_dtype(key))
        self._read_raw(key, out)
        if dtype is not None and out.is_floating_point() and out.dtype != dtype:
            out = out.to(dtype)
        return out.to(device) if device is not None else out

    def read_into(self, key: str, dest: Tensor) -> None:
        """Fill ``dest`` (same shape) with ``key``, cast to ``dest``'s dtype: straight from the file into its
        memory when ``dest`` is contiguous CPU memory of the stored dtype, else through one reused buffer of
        :data:`READ_CHUNK_BYTES` (a whole-tensor temporary per tensor left the allocator holding freed memory:
        loading d12-d12 in bfloat16 peaked 0.07 GB higher)."""
        if tuple(dest.shape) != self.header.shapes[key]:
            raise CheckpointError(f"{self.path}: tensor {key!r} is {self.header.shapes[key]}, expected {dest.shape}")
        stored = self._stored_dtype(key)
        with torch.no_grad():
            if dest.device.type == "cpu" and dest.is_contiguous() and dest.dtype == stored:
                self._read_raw(key, dest)
                return
            if not dest.is_contiguous():
                dest.copy_(self.read_tensor(key))
                return
            flat = dest.view(-1)
            step = max(1, READ_CHUNK_BYTES // stored.itemsize)
            if self._chunk is None or self._chunk.numel() < step * stored.itemsize:
                self._chunk = torch.empty(step * stored.itemsize, dtype=torch.uint8)
            for first in range(0, flat.numel(), step):
                n = min(step, flat.numel() - first)
                part = self._chunk[: n * stored.itemsize].view(stored)
                self._read_raw(key, part, first)
                flat[first : first + n].copy_(part)

    def close(self) -> None:
        self._cm.__exit__(None, None, None)
        self._fh.close()

    def __enter__(self) -> WeightsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_ST_TORCH = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def _data_offsets(fh: Any) -> tuple[dict[str, tuple[int, int]], int]:
    """-> (name -> (begin, end) byte offsets in the data section, where the data section starts) of an open
    safetensors file (8-byte little-endian header length, JSON header, data)."""
    n = int.from_bytes(os.pread(fh.fileno(), 8, 0), "little")
    header = json.loads(os.pread(fh.fileno(), n, 8))
    offsets = {
        k: (int(v["data_offsets"][0]), int(v["data_offsets"][1])) for k, v in header.items() if k != "__metadata__"
    }
    return offsets, 8 + n


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device: no memory and no random initialisation for
    weights that a checkpoint overwrites anyway. Buffers (position tables, FSQ constants) are computed as usual,
    so the non-persistent ones are right without a checkpoint. Load with ``load_state_dict(..., assign=True)``.
    Patches ``nn.Module.register_parameter`` while active: build one model at a time.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


_TORCH_ST = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}  # fmt: skip


def write_safetensors_streaming(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    metadata: dict[str, str] | None = None,
    fill: Callable[[str, Tensor], Tensor] | None = None,
) -> None:
    """Write a safetensors file one tensor at a time (``safetensors.torch.save_file`` first copies every tensor
    into bytes, doubling the memory of a paper-size model). ``fill(name, tensor)``, if given, makes the data
    written for each entry (same shape and dtype; e.g. random values for a model built on the meta device)."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _TORCH_ST[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # 8-byte aligned data, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, t in tensors.items():
            # One tensor's contiguous CPU copy at a time (none for contiguous CPU weights).
            c = (fill(name, t) if fill is not None else t).detach().to("cpu").contiguous()
            if c.shape != t.shape or c.dtype != t.dtype:
                raise ValueError(f"fill made {name!r} {c.dtype}{list(c.shape)}, expected {t.dtype}{list(t.shape)}")
            f.write(c.reshape(-1).view(torch.uint8).numpy().data)


def all_finite(t: Tensor, chunk: int = 1 << 20) -> bool:
    """Whether every value of ``t`` is finite, without a temporary the size of ``t``.

    ``torch.isfinite(t).all()`` made about 1.7x the bytes of a float32 tensor in temporaries (a 0.43 GB peak for
    a 0.26 GB tensor), which on a paper-size model dominated the memory of checking the weights on load and save.
    A sum is finite whenever every term is (NaN and infinities propagate through addition); only when the sum is
    not (a non-finite value, or an overflow of large finite ones) are the values checked exactly, a chunk at a time.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return True
    if bool(torch.isfinite(t.sum())):
        return True
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.numel(), chunk))


def materialize_parameters(model: nn.Module, dtype: torch.dtype | None = None, device: Any = None) -> None:
    """Give every meta-device parameter of ``model`` (see :func:`parameters_on_meta`) fresh uninitialised memory
    on ``device`` (floating-point ones in ``dtype``), to be filled with :meth:`WeightsFile.read_into`. Untouched
    memory costs nothing until written. Ends with ``model.to(device)`` so that modules keeping parameters as
    views of one buffer (the packed q/k/v projections) rebuild them."""
    device = torch.device(device if device is not None else "cpu")
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.device.type == "meta":
                dt = dtype if dtype is not None and p.is_floating_point() else p.dtype
                module._parameters[name] = nn.Parameter(
                    torch.empty(p.shape, dtype=dt, device=device), requires_grad=p.requires_grad
                )
    model.to(device)


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
