"""Generic trainer: AdamW + warm-up/cosine, EMA, AMP, accumulation, DDP/FSDP, atomic checkpoints, exact resume.

A run is described by a :class:`TrainTask` (which owns the model and computes the loss of a batch) and a
:class:`TrainConfig`. ``train`` is torchrun-aware: with ``WORLD_SIZE > 1`` in the environment it initialises
``torch.distributed`` (NCCL on CUDA, Gloo on CPU), shards the data per rank and averages gradients; rank 0 logs
and writes checkpoints. Multi-GPU launch::

    torchrun --nproc_per_node=8 -m flexitok train tokenizer --config configs/tokenizer-d12-d12.yaml

Resume is exact: every sample gets RNG seeds derived from (seed, epoch, position), the per-epoch order is a
seeded permutation, and checkpoints carry the model, EMA, optimizer, scheduler, data position and every rank's
RNG states, so "run N steps" and "run M steps, stop, resume to N" give bit-identical weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, cast, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from tqdm.auto import tqdm

from flexitok.errors import CheckpointError, InvalidInputError
from flexitok.train.checkpoint import (
    load_checkpoint,
    prune_checkpoints,
    resolve_last,
    save_checkpoint,
    update_last_link,
)
from flexitok.train.ema import EMA

Precision = Literal["fp32", "bf16"]


@runtime_checkable
class TrainTask(Protocol):
    """What the trainer needs from a task.

    Optional extras the trainer uses when present:

    * ``aux_modules: nn.ModuleDict`` -- further trained modules (e.g. a REPA projector): optimised and
      checkpointed with the model, but neither EMA'd nor exported;
    * ``extra_state() -> dict`` / ``load_extra_state(state)`` -- task-owned state to checkpoint (e.g. a GAN
      discriminator and its own optimizer);
    * ``export(model, out_dir)`` -- called on rank 0 at the end with the (EMA) model to write the final artefact.
    """

    @property
    def model(self) -> nn.Module:
        """The trained model (a read-only member, so a task may declare it as its own model class)."""
        ...

    def loss(self, batch: Any, step: int) -> tuple[Tensor, dict[str, Any]]:
        """Scalar loss of one (per-process) batch and a dict of floats / 0-d tensors to log."""
        ...

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        """Periodic evaluation on rank 0 (may be a no-op returning {})."""
        ...


@dataclass
class TrainConfig:
    out_dir: str = "runs/train"
    steps: int = 1000
    batch_size: int = 32  # per process (per micro-batch)
    lr: float = 1e-4
    min_lr: float = 0.0  # cosine decay floor (absolute)
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 0
    grad_clip: float = 1.0  # 0 = off
    grad_accum: int = 1
    ema_decay: float = 0.0  # 0 = off
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step))
    precision: Precision = "bf16"  # bf16 autocast on CUDA only; CPU always runs fp32
    compile: bool = False
    activation_checkpointing: bool = False
    fsdp: bool = False  # CUDA + torchrun only
    log_every: int = 10
    ckpt_every: int = 1000
    eval_every: int = 0  # 0 = off
    seed: int = 0
    num_workers: int = 0
    keep_checkpoints: int = 2
    cpu_threads: int | None = None  # torch.set_num_threads on CPU runs (None = torch's default)
    resume: bool = False  # continue from out_dir/last (required when out_dir already holds a checkpoint)
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        checks = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.min_lr <= self.lr, f"min_lr must lie in [0, lr={self.lr}], got {self.min_lr}"),
            (0 <= self.ema_decay < 1, f"ema_decay must lie in [0, 1), got {self.ema_decay}"),
            (self.precision in ("fp32", "bf16"), f"precision must be 'fp32' or 'bf16', got {self.precision!r}"),
            (len(self.betas) == 2, f"betas must have two entries, got {self.betas}"),
            (self.log_every >= 1 and self.ckpt_every >= 1, "log_every and ckpt_every must be >= 1"),
            (self.warmup_steps >= 0 and self.eval_every >= 0, "warmup_steps and eval_every must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidInputError(f"TrainConfig: {msg}")


# ---------------------------------------------------------------------------------------------- distributed


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # we initialised the process group (and must destroy it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK and join the process group (Gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, owns_group=owns)


# ---------------------------------------------------------------------------------------------- data


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (mod 2**32, its limit) and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _item_seed(seed: int, epoch: int, index: int) -> int:
    # A 63-bit mix (splitmix-style) so nearby (epoch, index) pairs get unrelated seeds.
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    return x & (2**63 - 1)


class ResumableSampler(Sampler[tuple[int, int]]):
    """Per-epoch seeded permutation, split across ranks, starting at a given per-rank offset.

    Yields ``(item_seed, dataset_index)`` so :class:`SeededDataset` can make each item's augmentation a pure
    function of (seed, epoch, position): the same sample gets the same crop in a resumed run.
    """

    def __init__(self, n: int, seed: int, rank: int, world_size: int) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def per_rank(self) -> int:
        return math.ceil(self.n / self.world)

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def indices(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        total = self.per_rank() * self.world
        perm = (perm * math.ceil(total / self.n))[:total]  # pad by wrapping so every rank gets the same count
        return perm[self.rank :: self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self.indices(self.epoch)
        for pos in range(self.start, len(mine)):
            yield _item_seed(self.seed, self.epoch, pos * self.world + self.rank), mine[pos]

    def __len__(self) -> int:
        return self.per_rank() - self.start


class SeededDataset(Dataset):
    """Wraps a dataset so ``ds[(seed, i)]`` runs ``base[i]`` under fixed torch/numpy/python RNG seeds.

    The caller's RNG states are restored afterwards, so with ``num_workers=0`` data loading does not perturb the
    training RNG stream either.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        seed, index = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            seed_everything(seed)
            try:
                return self.base[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_len(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        for v in batch.values():
            if isinstance(v, Tensor):
                return v.shape[0]
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0])
    return 0


# ---------------------------------------------------------------------------------------------- optimisation


class _TaskModule(nn.Module):
    """Holds the task's trained modules so DDP/FSDP see one root whose ``forward`` is the task's loss."""

    _task: TrainTask

    def __init__(self, task: TrainTask) -> None:
        super().__init__()
        self.model = task.model
        aux = getattr(task, "aux_modules", None)
        self.aux = aux if aux is not None else nn.ModuleDict()
        object.__setattr__(self, "_task", task)  # never registered as a submodule (no duplicate parameters)

    def forward(self, batch: Any, step: int) -> tuple[Tensor, dict[str, Any]]:
        return self._task.loss(batch, step)


_NO_DECAY_HINTS = ("token", "emb", "null", "register", "pos")


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on 1-D tensors (norms, biases) and learned embeddings / tokens."""
    embedding_params = {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        is_embedding = id(p) in embedding_params or (
            leaf not in ("weight", "bias") and any(h in leaf for h in _NO_DECAY_HINTS)
        )
        (no_decay if p.ndim < 2 or is_embedding else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of ``cfg.lr`` for update ``step`` (0-based): linear warm-up, then cosine down to ``min_lr``."""

    def f(step: int) -> float:
        if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, max(0.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)))
        lr = cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return lr / cfg.lr

    return f


# ---------------------------------------------------------------------------------------------- RNG state


def _rng_state() -> dict[str, Any]:
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


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _preserve_rng() -> Iterator[None]:
    """Evaluation draws noise; keep it from shifting the training RNG stream (exact resume)."""
    state = _rng_state()
    try:
        yield
    finally:
        _set_rng_state(state)


# ---------------------------------------------------------------------------------------------- logging


class _Logger:
    """metrics.jsonl always; TensorBoard too when it is installed (rank 0 only)."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                import tensorboard  # noqa: F401
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _as_float(v: Any) -> float:
    return float(v.detach().float().item()) if isinstance(v, Tensor) else float(v)


# ---------------------------------------------------------------------------------------------- FSDP helpers


def _full_state_dict(module: nn.Module, fsdp: bool) -> dict[str, Tensor]:
    if not fsdp:
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return cast(
        dict[str, Tensor],
        get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)),
    )


def _full_tensor(t: Tensor) -> Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _apply_fsdp(root: _TaskModule) -> None:
    from torch.distributed.fsdp import fully_shard

    # Shard each transformer block separately (memory), then the root (everything else).
    for m in list(root.modules()):
        blocks = getattr(m, "blocks", None)
        if m is not root and isinstance(blocks, nn.ModuleList):
            for blk in blocks:
                fully_shard(blk)
    fully_shard(root)


# ---------------------------------------------------------------------------------------------- the loop


def train(task: TrainTask, dataset: Dataset, cfg: TrainConfig, collate_fn: Callable | None = None) -> Path:
    """Train ``task.model`` on ``dataset``; returns the final checkpoint folder (``<out_dir>/last`` resolved)."""
    info = init_distributed()
    try:
        return _train(task, dataset, cfg, collate_fn, info)
    finally:
        if info.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(task: TrainTask, dataset: Dataset, cfg: TrainConfig, collate_fn: Callable | None, info: DistInfo) -> Path:
    out_dir = Path(cfg.out_dir)
    ckpt_root = out_dir / "checkpoints"
    device = info.device
    use_fsdp = cfg.fsdp
    if use_fsdp and (device.type != "cuda" or not info.enabled):
        raise InvalidInputError("fsdp=true needs CUDA and a multi-process torchrun launch")
    if device.type == "cpu" and cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    amp_dtype = torch.bfloat16 if (cfg.precision == "bf16" and device.type == "cuda") else None

    last = resolve_last(out_dir)
    if last is not None and not cfg.resume:
        raise CheckpointError(
            f"{out_dir} already holds a checkpoint ({last.name}); pass --resume to continue it or choose another out_dir"
        )
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    root = _TaskModule(task).to(device)
    if cfg.activation_checkpointing:
        fn = getattr(task.model, "set_activation_checkpointing", None)
        if fn is None:
            warnings.warn(
                f"{type(task.model).__name__} has no set_activation_checkpointing(); flag ignored", stacklevel=2
            )
        else:
            fn(True)
    if cfg.compile:
        # In-place compile of each child keeps state_dict keys unchanged (no `_orig_mod.` prefix).
        for child in task.model.children():
            if any(p.requires_grad for p in child.parameters()):
                child.compile()

    ema = EMA(task.model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
    eval_template: nn.Module | None = None
    if use_fsdp:
        import copy

        eval_template = copy.deepcopy(task.model).cpu() if info.is_main else None
        _apply_fsdp(root)
        # EMA of the local shards.
        ema = EMA(task.model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None

    optimizer = torch.optim.AdamW(param_groups(root, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))

    ddp: nn.parallel.DistributedDataParallel | None = None
    if info.enabled and not use_fsdp:
        ddp = nn.parallel.DistributedDataParallel(
            root,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # tasks may skip branches (REPA off, discriminator warm-up, ...)
        )
    forward = ddp if ddp is not None else root

    iterable = isinstance(dataset, IterableDataset)
    n = 0 if iterable else len(dataset)  # type: ignore[arg-type]
    sampler = ResumableSampler(max(n, 1), cfg.seed, info.rank, info.world_size)
    if not iterable and sampler.per_rank() < cfg.batch_size:
        raise InvalidInputError(
            f"the dataset has {n} items: fewer than one batch of {cfg.batch_size} per process "
            f"({info.world_size} processes)"
        )
    batches_per_epoch = sampler.per_rank() // cfg.batch_size
    step, epoch, index = 0, 0, 0

    if last is not None:
        ck = load_checkpoint(last)
        tstate = ck.objects.get("trainer")
        if tstate is None or "model" not in ck.tensors:
            raise CheckpointError(f"{last} is not a trainer checkpoint (no trainer state or model weights)")
        if tstate["world_size"] != info.world_size or tstate["batch_size"] != cfg.batch_size:
            raise CheckpointError(
                f"{last} was written with world_size={tstate['world_size']}, batch_size={tstate['batch_size']}; "
                f"resume needs the same (got {info.world_size}, {cfg.batch_size})"
            )
        _load_trained_state(root, task, ck.tensors, use_fsdp)
        if ema is not None:
            if "ema" not in ck.tensors:
                raise CheckpointError(f"{last} has no EMA weights but ema_decay={cfg.ema_decay}")
            ema.load_state_dict(_ema_to_local(ema, ck.tensors["ema"]))
        _load_optimizer(root, optimizer, ck.objects["optimizer"], use_fsdp)
        scheduler.load_state_dict(ck.objects["scheduler"])
        if "task" in ck.objects and hasattr(task, "load_extra_state"):
            task.load_extra_state(ck.objects["task"])
        step, epoch, index = int(tstate["step"]), int(tstate["epoch"]), int(tstate["index"])
        _set_rng_state(tstate["rng"][info.rank])
        if info.is_main:
            print(f"resumed from {last} at step {step}")
    else:
        # Distinct per-rank streams for the task's sampling (t, k, dropout); the data order has its own seeds.
        seed_everything(cfg.seed * 1000 + info.rank)

    seeded = SeededDataset(dataset)
    pos = {"epoch": epoch, "index": index}  # per-rank samples consumed in the current epoch

    def iterable_stream() -> Iterator[Any]:
        # Streaming datasets shard by rank/worker themselves; resume skips the consumed batches of the epoch
        # (exact when the stream is deterministic per epoch).
        while True:
            set_epoch = getattr(dataset, "set_epoch", None)
            if set_epoch is not None:
                set_epoch(pos["epoch"])
            loader = DataLoader(
                dataset,
                batch_size=cfg.batch_size,
                drop_last=True,
                num_workers=cfg.num_workers,
                collate_fn=collate_fn,
                pin_memory=device.type == "cuda",
                generator=torch.Generator().manual_seed(cfg.seed + pos["epoch"]),
            )
            skip = pos["index"] // cfg.batch_size
            got = False
            for i, b in enumerate(loader):
                got = True
                if i < skip:
                    continue
                pos["index"] += cfg.batch_size
                yield b
            if not got:
                raise InvalidInputError("the streaming dataset yielded no full batch")
            pos["epoch"], pos["index"] = pos["epoch"] + 1, 0

    def batch_stream() -> Iterator[Any]:
        if iterable:
            yield from iterable_stream()
            return
        while True:
            if pos["index"] >= batches_per_epoch * cfg.batch_size:
                pos["epoch"], pos["index"] = pos["epoch"] + 1, 0
            sampler.set_position(pos["epoch"], pos["index"])
            loader = DataLoader(
                seeded,
                batch_size=cfg.batch_size,
                sampler=sampler,
                drop_last=True,
                num_workers=cfg.num_workers,
                collate_fn=collate_fn,
                pin_memory=device.type == "cuda",
                generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
            )
            for b in loader:
                pos["index"] += cfg.batch_size
                yield b
                if pos["index"] >= batches_per_epoch * cfg.batch_size:
                    break

    logger = _Logger(out_dir, info.is_main)
    pbar = tqdm(total=cfg.steps, initial=step, disable=not (info.is_main and cfg.progress), dynamic_ncols=True)
    stream = batch_stream()
    final_ckpt: Path | None = last if (last is not None and step >= cfg.steps) else None
    window_t, window_images, loss_sum, n_logged = time.perf_counter(), 0, 0.0, 0
    logs_sum: dict[str, Tensor | float] = {}
    root.train()
    try:
        while step < cfg.steps:
            optimizer.zero_grad(set_to_none=True)
            images = 0
            for micro in range(cfg.grad_accum):
                batch = _to_device(next(stream), device)
                images += _batch_len(batch)
                last_micro = micro == cfg.grad_accum - 1
                ctx = ddp.no_sync() if ddp is not None and not last_micro else contextlib.nullcontext()
                with ctx:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        loss, logs = forward(batch, step)
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.detach().float() / cfg.grad_accum
                for k, v in logs.items():  # kept as tensors until a log step: no device sync per step
                    v = v.detach().float() if isinstance(v, Tensor) else float(v)
                    logs_sum[k] = logs_sum.get(k, 0.0) + v / cfg.grad_accum
            grad_norm = (
                nn.utils.clip_grad_norm_(root.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else torch.tensor(0.0)
            )
            optimizer.step()
            scheduler.step()
            step += 1
            if ema is not None:
                ema.update(task.model, step)
            after = getattr(task, "after_step", None)
            if after is not None:
                after(step)
            window_images += images * info.world_size
            n_logged += 1

            if step % cfg.log_every == 0 or step == cfg.steps:
                loss_t = torch.as_tensor(loss_sum, dtype=torch.float32, device=device) / n_logged
                if info.enabled:
                    dist.all_reduce(loss_t)
                    loss_t /= info.world_size
                loss_val = float(loss_t)
                if not math.isfinite(loss_val):
                    raise RuntimeError(f"training diverged: loss is {loss_val} at step {step}")
                dt = time.perf_counter() - window_t
                metrics = {
                    "loss": loss_val,
                    "lr": float(scheduler.get_last_lr()[0]),
                    "grad_norm": _as_float(_full_tensor(grad_norm)),
                    "images_per_s": window_images / max(dt, 1e-9),
                    "epoch": pos["epoch"],
                    **{k: _as_float(v) / n_logged for k, v in logs_sum.items()},
                }
                logger.log(step, metrics)
                pbar.set_postfix(loss=f"{loss_val:.4f}", img_s=f"{metrics['images_per_s']:.1f}")
                window_t, window_images, loss_sum, logs_sum, n_logged = time.perf_counter(), 0, 0.0, {}, 0
            pbar.update(1)

            if cfg.eval_every and step % cfg.eval_every == 0:
                _evaluate(task, root, ema, eval_template, use_fsdp, info, step, out_dir, logger)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                final_ckpt = _save(
                    task, root, ema, optimizer, scheduler, cfg, info, step, pos, ckpt_root, out_dir, use_fsdp
                )
    finally:
        pbar.close()
        logger.close()

    if hasattr(task, "export"):
        model = _eval_model(task, root, ema, eval_template, use_fsdp, info)
        if info.is_main and model is not None:
            task.export(model, out_dir)
        if info.enabled:
            dist.barrier()
    assert final_ckpt is not None
    return final_ckpt


def _eval_model(
    task: TrainTask, root: _TaskModule, ema: EMA | None, template: nn.Module | None, fsdp: bool, info: DistInfo
) -> nn.Module | None:
    """The model to evaluate / export: EMA weights if enabled. Collective under FSDP; None on ranks > 0 there."""
    if fsdp:
        if ema is not None:
            state = {k: _full_tensor(v).cpu() for k, v in ema.state_dict().items()}
            full = _full_state_dict(task.model, True)
            full.update(state)
        else:
            full = _full_state_dict(task.model, True)
        if not info.is_main or template is None:
            return None
        template.load_state_dict(full)
        return template.to(info.device)
    if ema is not None:
        return ema.averaged_model(task.model)
    return task.model


def _evaluate(
    task: TrainTask,
    root: _TaskModule,
    ema: EMA | None,
    template: nn.Module | None,
    fsdp: bool,
    info: DistInfo,
    step: int,
    out_dir: Path,
    logger: _Logger,
) -> None:
    model = _eval_model(task, root, ema, template, fsdp, info)
    if info.is_main and model is not None:
        was_training = model.training
        model.eval()
        with _preserve_rng(), torch.no_grad():
            metrics = task.evaluate(model, step, out_dir / "eval")
        model.train(was_training)
        if metrics:
            logger.log(step, {f"eval/{k}": float(v) for k, v in metrics.items()})
    if info.enabled:
        dist.barrier()


def _load_trained_state(root: _TaskModule, task: TrainTask, tensors: dict[str, dict[str, Tensor]], fsdp: bool) -> None:
    try:
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            full: dict[str, Any] = {f"model.{k}": v for k, v in tensors["model"].items()}
            full.update({f"aux.{k}": v for k, v in tensors.get("aux", {}).items()})
            set_model_state_dict(root, full, options=StateDictOptions(full_state_dict=True))
        else:
            task.model.load_state_dict(tensors["model"])
            if len(root.aux):
                root.aux.load_state_dict(tensors.get("aux", {}))
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"checkpoint weights do not match the model: {e}") from e


def _ema_to_local(ema: EMA, state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in state.items():
        shadow = ema.shadow.get(k)
        if shadow is not None and hasattr(shadow, "device_mesh"):  # FSDP: re-shard the full tensor
            from torch.distributed.tensor import DTensor, distribute_tensor

            assert isinstance(shadow, DTensor)
            v = distribute_tensor(v.to(shadow.device), shadow.device_mesh, shadow.placements)
        out[k] = v
    return out


def _load_optimizer(root: _TaskModule, optimizer: torch.optim.Optimizer, state: dict[str, Any], fsdp: bool) -> None:
    try:
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(root, optimizer, state, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"optimizer state does not match the model: {e}") from e


def _save(
    task: TrainTask,
    root: _TaskModule,
    ema: EMA | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    info: DistInfo,
    step: int,
    pos: dict[str, int],
    ckpt_root: Path,
    out_dir: Path,
    fsdp: bool,
) -> Path:
    """Collective (every rank calls it); rank 0 writes. Returns the checkpoint folder."""
    rng = _rng_state()
    rngs: list[Any] = [None] * info.world_size
    if info.enabled:
        dist.all_gather_object(rngs, rng)
    else:
        rngs = [rng]
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = _full_state_dict(root, True)
        model_sd = {k[len("model.") :]: v for k, v in full.items() if k.startswith("model.")}
        aux_sd = {k[len("aux.") :]: v for k, v in full.items() if k.startswith("aux.")}
        opt_sd = get_optimizer_state_dict(
            root, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        ema_sd = {k: _full_tensor(v).cpu() for k, v in ema.state_dict().items()} if ema is not None else None
    else:
        model_sd, aux_sd, opt_sd = task.model.state_dict(), root.aux.state_dict(), optimizer.state_dict()
        ema_sd = ema.state_dict() if ema is not None else None
    path = ckpt_root / f"step_{step:08d}"
    if info.is_main:
        tensors = {"model": model_sd}
        if aux_sd:
            tensors["aux"] = aux_sd
        if ema_sd is not None:
            tensors["ema"] = ema_sd
        trainer_state = {
            "step": step,
            "epoch": pos["epoch"],
            "index": pos["index"],
            "world_size": info.world_size,
            "batch_size": cfg.batch_size,
            "rng": rngs,
            "config": dataclasses.asdict(cfg),
        }
        objects: dict[str, Any] = {"optimizer": opt_sd, "scheduler": scheduler.state_dict(), "trainer": trainer_state}
        if hasattr(task, "extra_state"):
            objects["task"] = task.extra_state()
        save_checkpoint(path, tensors, objects, meta={"step": step})
        update_last_link(out_dir / "last", path)
        prune_checkpoints(ckpt_root, cfg.keep_checkpoints, protect=path)
    if info.enabled:
        dist.barrier()
    return path
