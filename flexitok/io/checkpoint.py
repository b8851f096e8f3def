"""Atomic file writes and safetensors loading for the io layer and above.

The implementations live in :mod:`flexitok.utils.files` and :mod:`flexitok.utils.weights` (the lowest layer, so
that models can persist themselves without importing io); this module re-exports them under their old names.
"""

from __future__ import annotations

from flexitok.utils.files import atomic_write, atomic_write_bytes, atomic_write_json, replace_dir
from flexitok.utils.weights import load_state_dict_strict, read_safetensors, safetensors_ready, save_safetensors

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "load_state_dict_strict",
    "read_safetensors",
    "replace_dir",
    "safetensors_ready",
    "save_safetensors",
]
