"""``TrainState``: where a run is (update count, data position, RNG streams) and what it was configured with.

Together with the module, optimizer and scheduler states it is everything a checkpoint needs for an exact
resume: "run N updates" and "run M, stop, resume to N" give bit-identical weights.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from flexitok.errors import CheckpointError


@dataclass
class TrainState:
    """``step``: optimizer updates done. ``epoch`` / ``index``: the data position (per-process samples consumed
    in the current epoch). ``rng``: every rank's RNG states (filled when saving). ``config``: the run config as
    plain data (compared on resume). ``world_size`` / ``batch_size``: what the data position is relative to."""

    step: int = 0
    epoch: int = 0
    index: int = 0
    world_size: int = 1
    batch_size: int = 0
    rng: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"step", "epoch", "index", "world_size", "batch_size", "rng"} - set(state)
        if missing:
            raise CheckpointError(f"trainer state lacks {sorted(missing)}: not a flexitok training checkpoint")
        self.step, self.epoch, self.index = int(state["step"]), int(state["epoch"]), int(state["index"])
        self.world_size, self.batch_size = int(state["world_size"]), int(state["batch_size"])
        self.rng = list(state["rng"])
        config = dict(state.get("config") or {})
        # 0.1.0 checkpoints stored only the TrainerConfig fields, flat.
        self.config = {"train": config} if config and "train" not in config and "lr" in config else config


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states, as checkpointable tensors and ints."""
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)  # the legacy (tuple) form, the default
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Run a block (evaluation, an extra optimizer's loss) without shifting the training RNG stream."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
