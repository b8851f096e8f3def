"""Generic trainer: exact resume, atomic checkpoints, DDP equivalence, schedule and parameter groups."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from flexitok.config import tiny_config
from flexitok.errors import CheckpointError
from flexitok.models.flextok import FlexTok
from flexitok.train.checkpointing import files as ckpt_mod
from flexitok.train.checkpointing.files import load_checkpoint, resolve_last, save_checkpoint, update_last_link
from flexitok.train.optim import lr_lambda, param_groups
from flexitok.train.task import TrainTask
from flexitok.train.tokenizer import TokenizerTask, TokenizerTaskConfig
from flexitok.train.trainer import TrainerConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


class NoisyImages(torch.utils.data.Dataset):
    """Fixed images plus per-item random jitter (exercises the per-item RNG seeding on resume)."""

    def __init__(self, n: int = 24, size: int = 16) -> None:
        g = torch.Generator().manual_seed(123)
        self.images = torch.rand(n, 3, size, size, generator=g) * 1.6 - 0.8

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": (self.images[i] + 0.05 * torch.randn(3, *self.images.shape[-2:])).clamp(-1, 1), "label": 0}


class Killed(Exception):
    pass


class KillingTask(TokenizerTask):
    """Raises when asked for the loss of update ``kill_at`` (simulates a crash mid-run)."""

    kill_at: int | None = None

    def loss(self, batch, step):
        if self.kill_at is not None and step == self.kill_at:
            raise Killed
        return super().loss(batch, step)


def _tiny_task(kill_at: int | None = None) -> KillingTask:
    torch.manual_seed(0)
    model = FlexTok(tiny_config(image_size=16, n_registers=4, dim=32, depth=1))
    task = KillingTask(model, TokenizerTaskConfig(cfg_dropout=0.2, token_corruption=0.1, fsq_drop_quant=0.2))
    task.kill_at = kill_at
    return task


def _cfg(out: Path, **kw) -> TrainerConfig:
    base = dict(
        out_dir=str(out),
        steps=6,
        batch_size=8,
        lr=1e-3,
        warmup_steps=2,
        grad_accum=2,
        ema_decay=0.9,
        ckpt_every=3,
        log_every=1,
        progress=False,
        seed=7,
    )
    base.update(kw)
    return TrainerConfig(**base)


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    data = NoisyImages()  # 24 items, batch 8 x accum 2: epochs end mid-update, so resume crosses an epoch boundary
    full = train(_tiny_task(), data, _cfg(tmp_path / "a"))

    with pytest.raises(Killed):
        train(_tiny_task(kill_at=4), data, _cfg(tmp_path / "b"))  # dies after checkpoint 3 and one more update
    assert resolve_last(tmp_path / "b").name == "step_00000003"
    with pytest.raises(CheckpointError, match="--resume"):
        train(_tiny_task(), data, _cfg(tmp_path / "b"))  # refuses to silently restart over a checkpoint
    resumed = train(_tiny_task(), data, _cfg(tmp_path / "b", resume=True))

    a, b = load_checkpoint(full), load_checkpoint(resumed)
    assert a.meta["step"] == b.meta["step"] == 6
    for part in ("model", "ema"):
        assert a.tensors[part].keys() == b.tensors[part].keys()
        for k in a.tensors[part]:
            assert torch.equal(a.tensors[part][k], b.tensors[part][k]), f"{part}.{k} differs after resume"
    sa, sb = a.objects["optimizer"]["state"], b.objects["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[i][k], sb[i][k])
    assert a.objects["trainer"]["epoch"] == b.objects["trainer"]["epoch"]
    assert a.objects["trainer"]["index"] == b.objects["trainer"]["index"]
    # EMA really differs from the raw weights (so the comparison above is not vacuous).
    assert any(not torch.equal(a.tensors["ema"][k], a.tensors["model"][k]) for k in a.tensors["ema"])
    losses = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses] == [1, 2, 3, 4, 5, 6]


def _write(tmp: Path, step: int, value: float) -> Path:
    path = save_checkpoint(
        tmp / "checkpoints" / f"step_{step:08d}",
        {"model": {"w": torch.full((64, 64), value)}},
        {"trainer": {"step": step}},
        meta={"step": step},
    )
    update_last_link(tmp / "last", path)
    return path


def test_truncated_or_corrupt_checkpoint_raises(tmp_path: Path) -> None:
    path = _write(tmp_path, 1, 1.0)
    assert torch.equal(load_checkpoint(path).tensors["model"]["w"], torch.ones(64, 64))
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    f.write_bytes(b"\xff" * len(data))  # same size, garbage header
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(path)


def test_interrupted_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _write(tmp_path, 1, 1.0)

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt  # e.g. the job is killed mid-write

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, 2, 2.0)
    monkeypatch.undo()
    assert resolve_last(tmp_path) == first.resolve()
    assert torch.equal(load_checkpoint(resolve_last(tmp_path)).tensors["model"]["w"], torch.ones(64, 64))
    assert not (tmp_path / "checkpoints" / "step_00000002").exists()
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    # Overwriting an existing step folder is atomic too.
    _write(tmp_path, 1, 3.0)
    assert torch.equal(load_checkpoint(resolve_last(tmp_path)).tensors["model"]["w"], torch.full((64, 64), 3.0))


def test_resume_from_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    data = NoisyImages(n=16)
    cfg = _cfg(tmp_path, steps=1, grad_accum=1, ckpt_every=1)
    last = train(_tiny_task(), data, cfg)
    opt = last / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        train(_tiny_task(), data, _cfg(tmp_path, steps=2, grad_accum=1, ckpt_every=1, resume=True))


def test_lr_schedule_warmup_then_cosine_to_min() -> None:
    cfg = TrainerConfig(steps=100, lr=1e-3, min_lr=1e-5, warmup_steps=10)
    f = lr_lambda(cfg)
    lrs = [f(s) * cfg.lr for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert f(cfg.steps) * cfg.lr == pytest.approx(1e-5)
    assert lrs[55] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_param_groups_exclude_norms_biases_and_embeddings() -> None:
    model = FlexTok(tiny_config(image_size=16, n_registers=4, dim=32, depth=1))
    groups = param_groups(model, 0.05)
    decay = {id(p) for p in groups[0]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    for p in groups[1]["params"]:
        assert p.ndim < 2 or any(h in names[id(p)] for h in ("register", "posemb", "token"))
    assert id(model.decoder.mask_token) not in decay and id(model.decoder.register_posemb) not in decay
    assert id(model.decoder.from_codes.weight) in decay


# ---------------------------------------------------------------------------------------------- DDP


class Regression(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 8, generator=g)
        self.y = self.x @ torch.randn(8, 3, generator=g) + 0.1 * torch.randn(64, 3, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


class RegressionTask(TrainTask):
    """Deterministic loss (no sampling), so 1 process on B items equals 2 processes on B/2 each."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)))

    def loss(self, batch, step):
        loss = (self.model(batch["x"]) - batch["y"]).pow(2).mean()
        return loss, {"mse": loss.detach()}


def _ddp_worker(rank: int, world: int, port: int, out: str, result: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    task = RegressionTask()
    train(
        task,
        Regression(),
        TrainerConfig(
            out_dir=out,
            steps=3,
            batch_size=8,
            lr=1e-2,
            grad_clip=0.0,
            weight_decay=0.1,
            log_every=1,
            ckpt_every=3,
            progress=False,
            seed=3,
        ),
    )
    if rank == 0:  # grads of the last update survive train() (zeroed only at the start of the next update)
        torch.save({n: p.grad.clone() for n, p in task.model.named_parameters()}, result)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_single_process(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(tmp_path / "grads.pt")), nprocs=2)
    single = RegressionTask()
    train(
        single,
        Regression(),
        TrainerConfig(
            out_dir=str(tmp_path / "one"),
            steps=3,
            batch_size=16,
            lr=1e-2,
            grad_clip=0.0,
            weight_decay=0.1,
            log_every=1,
            ckpt_every=3,
            progress=False,
            seed=3,
        ),
    )
    ddp_grads = torch.load(tmp_path / "grads.pt")
    ddp_weights = load_checkpoint(resolve_last(tmp_path / "ddp")).tensors["model"]
    for n, p in single.model.named_parameters():
        torch.testing.assert_close(ddp_grads[n], p.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ddp_weights[n], p.detach(), rtol=1e-5, atol=1e-6)
    # The per-rank data shards were disjoint halves of the single-process batches (same metrics on rank 0 only).
    assert (tmp_path / "ddp" / "metrics.jsonl").is_file()


class StreamOfPairs(torch.utils.data.IterableDataset):
    def __init__(self) -> None:
        self.data = Regression()
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self):
        for i in range(20):
            yield self.data[i]


def test_iterable_dataset_streams_over_epochs(tmp_path: Path) -> None:
    stream = StreamOfPairs()
    task = RegressionTask()
    cfg = TrainerConfig(
        out_dir=str(tmp_path), steps=5, batch_size=8, lr=1e-2, log_every=1, ckpt_every=5, progress=False
    )
    last = train(task, stream, cfg)
    state = load_checkpoint(last).objects["trainer"]
    # 20 items -> 2 full batches per epoch: 5 updates = epochs 0, 1 and one batch of epoch 2.
    assert stream.epochs == [0, 1, 2] and state["epoch"] == 2 and state["index"] == 8


def test_ema_update_and_warmup() -> None:
    from flexitok.train.ema import EMA

    lin = nn.Linear(2, 2)
    ema = EMA(lin, 0.99)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        lin.weight.add_(1.0)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10_000) == 0.99 and ema.decay_at(None) == 0.99
    ema.update(lin, step=0)  # warm-up decay 0.1: mostly the new weights
    torch.testing.assert_close(ema.shadow["weight"], 0.1 * start["weight"] + 0.9 * lin.weight.detach())
    averaged = ema.averaged_model(lin)
    assert torch.equal(averaged.weight, ema.shadow["weight"]) and not torch.equal(averaged.weight, lin.weight)
    with pytest.raises(KeyError):
        ema.load_state_dict({"weight": start["weight"]})


def test_task_base_class_defaults_and_type_check(tmp_path: Path) -> None:
    task = TrainTask(nn.Linear(2, 2))
    assert task.extra_optimizers() == [] and task.evaluate(task.model, 0, tmp_path) == {}
    assert task.extra_state() == {} and task.export(task.model, tmp_path) is None
    assert len(task.aux_modules) == 0 and len(task.frozen_modules) == 0
    with pytest.raises(NotImplementedError):
        task.loss({}, 0)

    class NotATask:
        model = nn.Linear(2, 2)

        def loss(self, batch, step):
            raise AssertionError

    with pytest.raises(TypeError, match="TrainTask subclass"):
        train(NotATask(), Regression(), TrainerConfig(out_dir=str(tmp_path), steps=1, batch_size=4, progress=False))


def test_task_logs_stay_on_the_device() -> None:
    """Logs are 0-d tensors: the trainer reads them only at log steps (no host sync per step in any task)."""
    from flexitok.models.generator import Generator, generator_preset
    from flexitok.train.generator import GeneratorTask, GeneratorTaskConfig
    from flexitok.train.vae import VAEModelConfig, VAETask, VAETaskConfig, build_autoencoder

    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    vae = build_autoencoder(VAEModelConfig(latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4))
    gen = Generator(generator_preset("tiny", vocab_size=20, n_tokens=4, num_classes=3))
    cases = [
        (_tiny_task(), {"image": images}),
        (VAETask(vae, VAETaskConfig(gan_weight=0.1, disc_channels=8, disc_layers=2)), {"image": images}),
        (GeneratorTask(gen, GeneratorTaskConfig()), {"tokens": torch.randint(0, 20, (2, 4)), "label": [0, 2]}),
    ]
    for task, batch in cases:
        loss, logs = task.loss(batch, 0)
        assert loss.ndim == 0 and all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in logs.values()), logs
        for extra in task.extra_optimizers():
            x_loss, x_logs = extra.loss(batch, 0)
            assert x_loss.ndim == 0 and all(isinstance(v, torch.Tensor) for v in x_logs.values())
