"""Per-module precision overrides (the official ``dtype_override`` options)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def precision_override(device_type: str, name: str | None) -> AbstractContextManager:
    """No change for ``None``; else autocast to that dtype, or autocast switched off for float32 (like the
    official ``get_autocast_context``)."""
    if name is None:
        return nullcontext()
    dtype = PRECISIONS[name]
    return torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)
