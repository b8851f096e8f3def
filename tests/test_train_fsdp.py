"""FSDP2 (fully_shard) on 2 Gloo processes: the loss curve of 1-process training, sharded DCP checkpoints, kill -9 +
resume. The same code path runs NCCL on GPUs (device and backend come from the torchrun environment)."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from flexitok.errors import CheckpointError
from flexitok.train.checkpointing.files import SHARDED, read_manifest, resolve_last
from flexitok.train.task import TrainTask
from flexitok.train.trainer import TrainerConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


class Regression(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 8, generator=g)
        self.y = torch.tanh(self.x @ torch.randn(8, 3, generator=g)) + 0.1 * torch.randn(64, 3, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


class BlockNet(nn.Module):
    """``x [B, 8] -> [B, 3]`` with a ``blocks`` list, so FSDP shards each block as its own group."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(2)])
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for blk in self.blocks:
            h = h + blk(h)
        return self.out(h)


class RegressionTask(TrainTask):
    """Deterministic loss (no sampling): N processes on B/N items each equal 1 process on B items.

    ``kill_at``: the process SIGKILLs itself when asked for the loss of that update (a crash without cleanup).
    """

    def __init__(self, kill_at: int | None = None) -> None:
        torch.manual_seed(0)
        super().__init__(BlockNet())
        self.kill_at = kill_at

    def loss(self, batch, step):
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        loss = (self.model(batch["x"]) - batch["y"]).pow(2).mean()
        return loss, {"mse": loss.detach()}

    def export(self, model, out_dir):
        save_file(
            {k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out_dir / "final.safetensors")
        )


def _cfg(out: Path, batch_size: int, **kw) -> TrainerConfig:
    base = dict(
        out_dir=str(out),
        steps=6,
        batch_size=batch_size,
        grad_accum=2,
        lr=1e-2,
        warmup_steps=2,
        weight_decay=0.1,
        ema_decay=0.8,
        log_every=1,
        ckpt_every=2,
        progress=False,
        seed=3,
    )
    base.update(kw)
    return TrainerConfig(**base)


def _worker(rank: int, world: int, port: int, out: str, kw: dict) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    kill_at = kw.pop("kill_at", None)
    train(RegressionTask(kill_at), Regression(), _cfg(Path(out), batch_size=4, fsdp=True, **kw))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(out: Path, **kw) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(out), kw), nprocs=2)


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_process_fsdp_matches_one_process(tmp_path: Path) -> None:
    _spawn(tmp_path / "fsdp", ckpt_every=6)
    single = tmp_path / "single"
    train(RegressionTask(), Regression(), _cfg(single, batch_size=8, ckpt_every=6))

    # Same loss curve (2 x 4 items per micro-batch vs 1 x 8; 2 micro-batches per update, EMA, clipping).
    fsdp_losses, one_losses = _losses(tmp_path / "fsdp"), _losses(single)
    assert len(fsdp_losses) == len(one_losses) == 6
    assert fsdp_losses == pytest.approx(one_losses, rel=1e-5, abs=1e-7)
    assert one_losses[-1] < 0.8 * one_losses[0]  # it learns, so the comparison is not vacuous
    a, b = load_file(tmp_path / "fsdp" / "final.safetensors"), load_file(single / "final.safetensors")
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)

    # The checkpoint is sharded (DCP files of both ranks), every file hashed in the manifest.
    last = resolve_last(tmp_path / "fsdp")
    files = read_manifest(last)["files"]
    shards = [f for f in files if f.startswith(f"{SHARDED}/")]
    assert f"{SHARDED}/.metadata" in shards and len([f for f in shards if f.endswith(".distcp")]) == 2
    assert "model.safetensors" not in files and all(len(e["sha256"]) == 64 for e in files.values())


@pytest.mark.slow  # three 2-process launches
def test_two_process_fsdp_kill9_then_resume_continues_exactly(tmp_path: Path) -> None:
    _spawn(tmp_path / "full")
    # kill -9 of both ranks in update 5 (after the step-4 checkpoint), then resume: the run ends where the
    # uninterrupted one did.
    with pytest.raises(mp.ProcessExitedException):
        _spawn(tmp_path / "killed", kill_at=4)
    assert resolve_last(tmp_path / "killed").name == "step_00000004"
    _spawn(tmp_path / "killed", resume=True)
    a, b = load_file(tmp_path / "full" / "final.safetensors"), load_file(tmp_path / "killed" / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "killed")[-2:] == _losses(tmp_path / "full")[-2:]


def test_single_process_fsdp_sharded_checkpoint_is_verified(tmp_path: Path) -> None:
    # FSDP on one process (a one-member process group) uses the same sharded save / load path.
    train(RegressionTask(), Regression(), _cfg(tmp_path / "a", batch_size=8, fsdp=True, steps=4))
    train(RegressionTask(), Regression(), _cfg(tmp_path / "b", batch_size=8, fsdp=True, steps=2))
    train(RegressionTask(), Regression(), _cfg(tmp_path / "b", batch_size=8, fsdp=True, steps=4, resume=True))
    a, b = load_file(tmp_path / "a" / "final.safetensors"), load_file(tmp_path / "b" / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    shard = next((resolve_last(tmp_path / "a") / SHARDED).glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    cfg = _cfg(tmp_path / "a", batch_size=8, fsdp=True, steps=5, resume=True, resume_fallback=False)
    with pytest.raises(CheckpointError, match="SHA-256"):
        train(RegressionTask(), Regression(), cfg)
    with pytest.raises(CheckpointError, match="fsdp=True"):  # a sharded checkpoint needs an FSDP resume
        train(RegressionTask(), Regression(), _cfg(tmp_path / "b", batch_size=8, steps=5, resume=True))
