"""Device selection shared by the library and the CLI."""

from __future__ import annotations

import torch

from flexitok.errors import InvalidInputError


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``mps`` -> a device that exists here (a clear error otherwise).

    ``auto`` picks CUDA, then MPS, then the CPU; asking for a device that is not present is an error, never a
    silent fallback.
    """
    if isinstance(name, torch.device):
        name = name.type
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("--device cuda was requested but no CUDA GPU is available; use --device cpu or auto")
    if name == "mps" and not mps_ok:
        raise InvalidInputError("--device mps was requested but Apple MPS is not available; use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise InvalidInputError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    return torch.device(name)
