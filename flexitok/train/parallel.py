"""Data parallelism: process group and device from the torchrun environment, DDP or FSDP2 around the task.

One code path for every launch: ``torchrun`` sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; the device is
``cuda:LOCAL_RANK`` when CUDA is available (backend NCCL), else the CPU (backend Gloo). With ``fsdp=true`` the
task's modules are sharded with ``torch.distributed.fsdp.fully_shard`` (each transformer block, then the root);
otherwise several processes use DDP. A plain single process uses neither (FSDP on one process, e.g. to test the
sharded code path, joins a one-member group).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from flexitok.train.task import TrainTask


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # we initialised the process group (and must destroy it)

    @property
    def enabled(self) -> bool:
        """Several processes (collectives needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(fsdp: bool = False) -> DistInfo:
    """Join the process group torchrun describes (Gloo on CPU, NCCL on CUDA) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    owns = False
    if (world > 1 or fsdp) and not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend=backend, device_id=device if cuda else None)
        else:  # a plain single process asked for FSDP: a one-member group needs no rendezvous
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, owns_group=owns)


class TaskModule(nn.Module):
    """One root holding the task's trained modules, so DDP/FSDP see a module whose ``forward`` is the loss."""

    _task: TrainTask

    def __init__(self, task: TrainTask) -> None:
        super().__init__()
        self.model = task.model
        self.aux = task.aux_modules
        object.__setattr__(self, "_task", task)  # never registered as a submodule (no duplicate parameters)

    def forward(self, batch: Any, step: int) -> tuple[Tensor, dict[str, Any]]:
        return self._task.loss(batch, step)


def apply_fsdp(root: TaskModule, info: DistInfo) -> None:
    """Shard each transformer block separately (peak memory), then the root (everything else)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for m in list(root.modules()):
        blocks = getattr(m, "blocks", None)
        if m is not root and isinstance(blocks, nn.ModuleList):
            for blk in blocks:
                fully_shard(blk, mesh=mesh)
    fully_shard(root, mesh=mesh)


def wrap_ddp(root: TaskModule, info: DistInfo) -> nn.parallel.DistributedDataParallel:
    return nn.parallel.DistributedDataParallel(
        root,
        device_ids=[info.device.index] if info.device.type == "cuda" else None,
        find_unused_parameters=True,  # tasks may skip branches (REPA off, discriminator warm-up, ...)
    )


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor of an FSDP shard (a collective on DTensors); plain tensors pass through."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def average_gradients(module: nn.Module, info: DistInfo) -> None:
    """Mean of every gradient over processes (for modules outside DDP/FSDP, e.g. a discriminator)."""
    if not info.enabled:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= info.world_size


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every process when ``flag`` is true on any of them."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
