"""Training-checkpoint integrity (#11): content hashes, finite checks before writing, fallback resume, the run lock,
stale temp folders, changed hyperparameters, kill -9 + bit-identical resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from flexitok.cli.main import main
from flexitok.config import tiny_config
from flexitok.errors import CheckpointError, TrainingError
from flexitok.models.flextok import FlexTok
from flexitok.train.checkpointing.files import FORMAT_V1, MANIFEST, load_checkpoint, resolve_last
from flexitok.train.tokenizer import TokenizerTask, TokenizerTaskConfig
from flexitok.train.trainer import TrainerConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, size: int = 16) -> None:
        g = torch.Generator().manual_seed(5)
        self.images = torch.rand(n, 3, size, size, generator=g) * 2 - 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


class FaultyTask(TokenizerTask):
    """``nan_loss_at``: the loss of that update is NaN. ``nan_weights_at``: after a finite loss of that update, a
    weight is set to NaN (an in-place corruption the loss does not show yet)."""

    nan_loss_at: int | None = None
    nan_weights_at: int | None = None

    def loss(self, batch, step):
        loss, logs = super().loss(batch, step)
        if step == self.nan_weights_at:
            with torch.no_grad():
                self.model.decoder.mask_token.fill_(float("nan"))
        return (loss * float("nan") if step == self.nan_loss_at else loss), logs


def _task(**faults) -> FaultyTask:
    torch.manual_seed(0)
    task = FaultyTask(FlexTok(tiny_config(image_size=16, n_registers=4, dim=32, depth=1)), TokenizerTaskConfig())
    for k, v in faults.items():
        setattr(task, k, v)
    return task


def _cfg(out: Path, **kw) -> TrainerConfig:
    base = dict(out_dir=str(out), steps=4, batch_size=4, lr=1e-3, ema_decay=0.9, ckpt_every=2, log_every=1)
    base.update(progress=False, seed=1, **kw)
    return TrainerConfig(**base)


def _same_weights(a: Path, b: Path) -> bool:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    return all(
        ca.tensors[part].keys() == cb.tensors[part].keys()
        and all(torch.equal(ca.tensors[part][k], cb.tensors[part][k]) for k in ca.tensors[part])
        for part in ("model", "ema")
    )


def _flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_any_checkpoint_file_is_detected_and_resume_falls_back(tmp_path: Path) -> None:
    data = Images()
    reference = train(_task(), data, _cfg(tmp_path / "ref", steps=6))  # keeps step_4 and step_6
    files = sorted(p.name for p in reference.iterdir())
    assert files == ["ema.safetensors", MANIFEST, "model.safetensors", "optimizer.pt", "scheduler.pt", "trainer.pt"]
    detected = 0
    for name in files:
        size = (reference / name).stat().st_size
        for pos in (0, size // 2, size - 2):
            run = tmp_path / f"flip-{name}-{pos}"
            shutil.copytree(tmp_path / "ref", run, symlinks=True)
            _flip(run / "checkpoints" / "step_00000006" / name, pos)
            with pytest.raises(CheckpointError, match="refusing to fall back") as err:
                train(_task(), data, _cfg(run, steps=6, resume=True, resume_fallback=False))
            assert "step_00000006" in str(err.value) and name.split(".")[0] in str(err.value)
            detected += 1
            if pos != size // 2:
                continue
            # With fallback: a warning, then training redoes steps 5-6 exactly as the uninterrupted run did.
            with pytest.warns(UserWarning, match="resuming from step_00000004"):
                final = train(_task(), data, _cfg(run, steps=6, resume=True))
            assert final.name == "step_00000006" and _same_weights(final, reference), name
            assert [p.name[:22] for p in (run / "checkpoints").glob("corrupt-*")] == ["corrupt-step_00000006-"]
    assert detected == 3 * len(files)


def test_nonfinite_loss_or_weights_never_become_a_checkpoint(tmp_path: Path) -> None:
    data = Images()
    # A NaN loss in update 3, between log steps (log_every=100) and before the step-4 checkpoint.
    with pytest.raises(TrainingError, match="diverged at step 4: a loss since the last checkpoint is not finite"):
        train(_task(nan_loss_at=2), data, _cfg(tmp_path / "loss", steps=6, log_every=100))
    assert resolve_last(tmp_path / "loss").name == "step_00000002"
    assert not (tmp_path / "loss" / "checkpoints" / "step_00000004").exists()
    # Finite losses, NaN weights.
    with pytest.raises(TrainingError, match="weights contain NaN"):
        train(_task(nan_weights_at=3), data, _cfg(tmp_path / "weights", steps=6, log_every=100))
    assert resolve_last(tmp_path / "weights").name == "step_00000002"
    # The intact step-2 checkpoint resumes (the corruption was in the task, not the checkpoint).
    assert train(_task(), data, _cfg(tmp_path / "weights", resume=True)).name == "step_00000004"


def _run_yaml(tmp_path: Path, steps: int = 2, name: str = "run", **train_kw) -> Path:
    """A tiny tokenizer run config whose out_dir is ``tmp_path / name``."""
    path = tmp_path / f"{name}.yaml"
    train_section = {
        "out_dir": str(tmp_path / name),
        "steps": steps,
        "batch_size": 4,
        "log_every": 1,
        "ckpt_every": 1,
        "cpu_threads": 1,
        "ema_decay": 0.9,
        "progress": False,
        **train_kw,
    }
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"preset": "tiny", "image_size": [16, 16], "encoder": {"n_registers": 4}},
                "data": {"kind": "skimage", "image_size": 16, "limit": 8},
                "train": train_section,
            }
        )
    )
    return path


def test_diverged_cli_run_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    original = TokenizerTask.loss

    def nan_at_step_1(self, batch, step):
        loss, logs = original(self, batch, step)
        return (loss * float("nan") if step == 1 else loss), logs

    monkeypatch.setattr(TokenizerTask, "loss", nan_at_step_1)
    assert main(["train", "tokenizer", "--config", str(_run_yaml(tmp_path, steps=3))]) == 2
    err = capsys.readouterr().err
    assert "error: training diverged at step 2" in err and "Traceback" not in err
    assert resolve_last(tmp_path / "run").name == "step_00000001"


def test_changed_hyperparameters_and_stale_temp_folders(tmp_path: Path, capsys) -> None:
    path = _run_yaml(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "tokenizer", "--config", str(path)]) == 0
    metrics = (run / "metrics.jsonl").read_text()
    args = ["train", "tokenizer", "--config", str(path), "--resume", "train.steps=3"]
    assert main([*args, "train.lr=0.01", "data.limit=6", "train.seed=2"]) == 2
    err = capsys.readouterr().err
    assert "train.lr: 0.0001 -> 0.01" in err and "data.limit: 8 -> 6" in err and "train.seed: 0 -> 2" in err
    assert "--allow-config-change" in err and "train.steps" not in err  # a new step count is what resume is for
    assert (run / "metrics.jsonl").read_text() == metrics and resolve_last(run).name == "step_00000002"

    # Leftovers of a crash during a checkpoint write are removed at start.
    stale = run / "checkpoints" / ".tmp-step_00000003-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    os.symlink("checkpoints/step_00000002", run / ".tmp-link-1234")
    with pytest.warns(UserWarning, match="changed hyperparameters: train.lr"):
        assert main([*args, "train.lr=0.01", "--allow-config-change"]) == 0
    assert not stale.exists() and not (run / ".tmp-link-1234").is_symlink()
    assert resolve_last(run).name == "step_00000003"
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.01

    # A 0.1.0 checkpoint (manifest of byte sizes only) still resumes, with a warning.
    last = resolve_last(run)
    manifest = json.loads((last / MANIFEST).read_text())
    v1 = {"format": FORMAT_V1, "files": {k: v["bytes"] for k, v in manifest["files"].items()}, "meta": manifest["meta"]}
    (last / MANIFEST).write_text(json.dumps(v1))
    with pytest.warns(UserWarning, match="predates content hashes"):
        assert main([*args[:-1], "train.steps=4", "train.lr=0.01"]) == 0

    # A corrupt last with --no-fallback: a clean error, nothing changed.
    _flip(resolve_last(run) / "model.safetensors", 100)
    assert main([*args[:-1], "train.steps=5", "train.lr=0.01", "--no-fallback"]) == 2
    assert "refusing to fall back" in capsys.readouterr().err and resolve_last(run).name == "step_00000004"


def test_a_second_run_on_the_same_out_dir_is_refused(tmp_path: Path, capsys) -> None:
    path = _run_yaml(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n",
            str(run / "train.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "tokenizer", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"in use by another training run (pid {holder.pid}" in err
        assert sorted(p.name for p in run.iterdir()) == ["train.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "tokenizer", "--config", str(path)]) == 0  # the lock died with its holder


def test_kill9_during_training_then_resume_is_bit_identical(tmp_path: Path) -> None:
    steps = 16
    assert main(["train", "tokenizer", "--config", str(_run_yaml(tmp_path, steps=steps, name="ref"))]) == 0
    path, run, reference = _run_yaml(tmp_path, steps=steps), tmp_path / "run", tmp_path / "ref"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flexitok", "train", "tokenizer", "--config", str(path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        last = run / "last"
        if last.is_symlink() and int(os.readlink(last).rsplit("_", 1)[-1]) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the training subprocess ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = resolve_last(run).name
    assert killed_at < f"step_{steps:08d}"
    assert main(["train", "tokenizer", "--config", str(path), "--resume"]) == 0
    ref_last, run_last = resolve_last(reference), resolve_last(run)
    assert run_last.name == ref_last.name == f"step_{steps:08d}"
    assert _same_weights(ref_last, run_last)
    a, b = load_checkpoint(ref_last).objects["optimizer"], load_checkpoint(run_last).objects["optimizer"]
    assert all(torch.equal(a["state"][i]["exp_avg_sq"], b["state"][i]["exp_avg_sq"]) for i in a["state"])
