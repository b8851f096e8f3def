"""Trainer faults and resume semantics (#22.3, #20.6): ``--allow-config-change`` really applies the new optimizer
settings (or refuses what it cannot), disk full / file-size limit during a save, SIGTERM, and logs cut back to
the checkpoint's step on resume."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flexitok.cli.main import main
from flexitok.errors import CheckpointError
from flexitok.train.checkpointing import checkpointer
from flexitok.train.checkpointing.files import load_checkpoint, resolve_last
from flexitok.train.metrics import MetricsWindow, cut_back
from flexitok.train.optim import lr_lambda
from flexitok.train.parallel import DistInfo
from flexitok.train.preemption import EXIT_STOPPED
from flexitok.train.trainer import train
from tests.test_train_fsdp import Regression, RegressionTask, _free_port
from tests.test_train_fsdp import _cfg as fsdp_cfg
from tests.test_train_integrity import ROOT, Images, _cfg, _run_yaml, _task

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_allow_config_change_applies_lr_betas_and_weight_decay(tmp_path: Path) -> None:
    data, run = Images(), tmp_path / "run"
    train(_task(), data, _cfg(run, steps=2, lr=1e-3, warmup_steps=0))
    new = dict(lr=1e-2, betas=(0.5, 0.9), weight_decay=0.2, warmup_steps=0)
    with pytest.warns(UserWarning, match="changed hyperparameters"):
        final = train(_task(), data, _cfg(run, steps=4, resume=True, allow_config_change=True, **new))
    cfg = _cfg(run, steps=4, **new)
    f = lr_lambda(cfg)
    logged = {r["step"]: r["lr"] for r in _rows(run) if "lr" in r}
    # The lr logged at step s is the one of update s + 1: base lr x schedule(s), with the NEW base lr.
    assert logged[3] == pytest.approx(1e-2 * f(3)) and logged[4] == pytest.approx(1e-2 * f(4))
    ck = load_checkpoint(final)
    assert ck.objects["scheduler"]["base_lrs"] == [1e-2] * len(ck.objects["scheduler"]["base_lrs"])
    groups = ck.objects["optimizer"]["param_groups"]
    assert all(tuple(g["betas"]) == (0.5, 0.9) for g in groups)
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.2]  # norms / biases / embeddings stay undecayed


def test_allow_config_change_refuses_what_it_cannot_apply(tmp_path: Path) -> None:
    data, run = Images(), tmp_path / "run"
    train(_task(), data, _cfg(run, steps=2))
    with pytest.raises(CheckpointError, match="batch_size=4; resume needs the same"):
        train(_task(), data, _cfg(run, steps=4, batch_size=2, resume=True, allow_config_change=True))
    with pytest.raises(CheckpointError, match="fsdp=False; resume with the same train.fsdp"):
        train(_task(), data, _cfg(run, steps=4, fsdp=True, resume=True, allow_config_change=True))
    assert resolve_last(run).name == "step_00000002"


def test_unchanged_config_resume_touches_nothing(tmp_path: Path) -> None:
    data = Images()
    ref = train(_task(), data, _cfg(tmp_path / "ref", steps=4))
    train(_task(), data, _cfg(tmp_path / "run", steps=2))
    resumed = train(_task(), data, _cfg(tmp_path / "run", steps=4, resume=True))
    a, b = load_checkpoint(ref).objects, load_checkpoint(resumed).objects
    assert a["scheduler"] == b["scheduler"]
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]


# ---------------------------------------------------------------------------------------------- disk full, file size


def _no_temp_left(run: Path) -> bool:
    return not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


def test_disk_full_during_a_save_is_a_clean_error_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    path, run = _run_yaml(tmp_path, steps=2), tmp_path / "run"
    assert main(["train", "tokenizer", "--config", str(path)]) == 0
    before = {p.name: p.read_bytes() for p in resolve_last(run).iterdir()}
    original = checkpointer.write_states

    def full_disk(folder: Path, tensors: dict, objects: dict) -> None:
        original(folder, {k: v for k, v in list(tensors.items())[:1]}, {})  # some bytes land, then the disk fills
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "optimizer.pt"))

    monkeypatch.setattr(checkpointer, "write_states", full_disk)
    assert main(["train", "tokenizer", "--config", str(path), "--resume", "train.steps=3"]) == 2
    err = capsys.readouterr().err
    assert "error: could not write checkpoint step_00000003" in err and "the disk is full" in err
    assert "step_00000002 is intact" in err and "--resume" in err and "Traceback" not in err
    assert resolve_last(run).name == "step_00000002" and _no_temp_left(run)
    assert {p.name: p.read_bytes() for p in resolve_last(run).iterdir()} == before
    monkeypatch.setattr(checkpointer, "write_states", original)
    assert main(["train", "tokenizer", "--config", str(path), "--resume", "train.steps=3"]) == 0  # space freed
    assert resolve_last(run).name == "step_00000003"


def test_a_file_size_limit_during_a_save_is_a_clean_error(tmp_path: Path) -> None:
    """A real EFBIG: the resumed run's process has RLIMIT_FSIZE below the size of its weights file."""
    path, run = _run_yaml(tmp_path, steps=2), tmp_path / "run"
    assert main(["train", "tokenizer", "--config", str(path)]) == 0
    last = resolve_last(run)
    before = {p.name: p.read_bytes() for p in last.iterdir()}
    limit = (last / "model.safetensors").stat().st_size // 2
    assert limit > 64 * 1024, "the weights file is too small to leave room for the logs under the limit"

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "flexitok", "train", "tokenizer", "--config", str(path), "--resume", "train.steps=3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=cap,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: could not write checkpoint step_00000003" in proc.stderr and "Traceback" not in proc.stderr
    assert "file-size limit" in proc.stderr, proc.stderr[-2000:]
    assert resolve_last(run) == last and _no_temp_left(run)
    assert {p.name: p.read_bytes() for p in last.iterdir()} == before


# ---------------------------------------------------------------------------------------------- SIGTERM


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen (process ended: {proc.poll()})")


def _logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


def test_sigterm_writes_a_checkpoint_at_the_step_boundary_and_exits_75(tmp_path: Path) -> None:
    """What SLURM sends before a kill: the run finishes its update, checkpoints it, says so and exits 75; a
    resume continues from there. DataLoader workers (num_workers=1) get the signal too, as under srun."""
    path = _run_yaml(tmp_path, steps=10_000, ckpt_every=5_000, num_workers=1)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flexitok", "train", "tokenizer", "--config", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        start_new_session=True,  # its own process group: signal it like a scheduler signals a job
    )
    try:
        _wait_for(lambda: len(_logged_steps(run)) >= 2, proc, "two logged steps")
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_STOPPED == 75, err[-3000:]
    last = resolve_last(run)
    assert last is not None
    step = int(last.name.rsplit("_", 1)[-1])
    assert 2 <= step < 5_000  # a checkpoint at the step boundary, not a periodic one
    assert f"error: stopped by SIGTERM after step {step} of 10000; checkpoint" in err and "--resume" in err
    assert "Traceback" not in err
    load_checkpoint(last)  # verifies every hash
    assert main(["train", "tokenizer", "--config", str(path), "--resume", f"train.steps={step + 2}"]) == 0
    assert resolve_last(run).name == f"step_{step + 2:08d}"


# ---------------------------------------------------------------------------------------------- logs on resume, DDP


def test_metrics_are_cut_back_to_the_checkpoint_step(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)] + [{"step": 4, "eval/psnr": 20.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')  # cut by kill -9
    assert cut_back(path, 4) == 2  # step 5 and the partial line
    assert [json.loads(line) for line in path.read_text().splitlines()] == [r for r in rows if r["step"] <= 4]
    assert cut_back(path, 4) == 0 and cut_back(tmp_path / "none.jsonl", 3) == 0


def _ddp_worker(rank: int, world: int, port: int, out: str, kw: dict) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    kill_at = kw.pop("kill_at", None)
    train(RegressionTask(kill_at), Regression(), fsdp_cfg(Path(out), batch_size=4, grad_accum=1, **kw))


@pytest.mark.slow
def test_two_process_kill9_resume_logs_each_step_once_and_averages_every_term_alike(tmp_path: Path) -> None:
    """kill -9 of both ranks in update 4, after the step-2 checkpoint and the step-3 log line; the resumed run
    logs steps 3-6 again: metrics.jsonl holds each step once. The task's only term ``mse`` is the loss itself,
    so under DDP both must be the same all-reduced mean (the ranks' halves of a batch have different losses)."""
    out = tmp_path / "ddp"
    with pytest.raises(mp.ProcessExitedException):
        mp.spawn(_ddp_worker, args=(2, _free_port(), str(out), {"kill_at": 3}), nprocs=2)
    assert resolve_last(out).name == "step_00000002" and _logged_steps(out) == [1, 2, 3]
    try:
        mp.spawn(_ddp_worker, args=(2, _free_port(), str(out), {"resume": True}), nprocs=2)
    except mp.ProcessExitedException as e:
        # Seen once in CI on the 2-core machine: a rank of the resumed run aborted at start-up inside gloo
        # ("terminate called without an active exception"). A crash is one more kill: resume again; the
        # assertions below then hold for two interruptions. The warning shows in CI's summary when it happens.
        warnings.warn(f"the resumed 2-process run died ({e}); resuming once more", stacklevel=1)
        mp.spawn(_ddp_worker, args=(2, _free_port(), str(out), {"resume": True}), nprocs=2)
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        assert r["mse"] == pytest.approx(r["loss"], rel=1e-6), r


def _window_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        info = DistInfo(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"), owns_group=True)
        window = MetricsWindow(grad_accum=2)
        for micro in range(2):  # rank 0: losses 1, 3 (mean 2); rank 1: 5, 7 (mean 6)
            value = torch.tensor(1.0 + 2 * micro + 4 * rank)
            window.add_micro_batch(value, {"flow": value, **({"only_rank1": 10.0} if rank == 1 else {})})
        window.end_update(4)
        loss, _, logs = window.summary(info)
        if rank == 0:
            Path(out).write_text(json.dumps({"loss": loss, **logs}))
    finally:
        dist.destroy_process_group()


def test_summary_reduces_the_loss_and_every_term_the_same_way(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    mp.spawn(_window_worker, args=(2, _free_port(), str(out)), nprocs=2)
    # The mean over ranks of each rank's mean per update; a term one rank did not log: the mean where logged.
    assert json.loads(out.read_text()) == {"loss": 4.0, "flow": 4.0, "only_rank1": 10.0}


# ---------------------------------------------------------------------------------------------- experiment trackers


def test_wandb_tracker_offline_and_a_missing_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    path = _run_yaml(tmp_path, steps=2, trackers=["tensorboard", "wandb"])
    assert main(["train", "tokenizer", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error: train.trackers includes 'wandb'" in err and "pip install wandb" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
    monkeypatch.delitem(sys.modules, "wandb")
    pytest.importorskip("wandb", reason="the wandb package is optional (pip install wandb)")

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    assert main(["train", "tokenizer", "--config", str(path)]) == 0
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), runs
    logged = {r["step"]: r["loss"] for r in _rows(tmp_path / "run") if "loss" in r}
    # Every logged loss is in the run file, as the JSON text W&B writes for it (the file's record format is
    # internal to wandb and changes between releases; the values are not).
    data = next(runs[0].glob("*.wandb")).read_bytes()
    assert logged and all(json.dumps(v).encode() in data for v in logged.values()), logged


class _SigtermTask(RegressionTask):
    """Rank 1 receives SIGTERM during update 3 (rank 0 never does): both must stop after step 3."""

    def loss(self, batch, step):
        if step == 2 and dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().loss(batch, step)


def _sigterm_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    train(_SigtermTask(), Regression(), fsdp_cfg(Path(out), batch_size=4, grad_accum=1, steps=50, ckpt_every=50))


def test_two_process_sigterm_on_one_rank_stops_both_at_the_same_step(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    with pytest.raises(mp.ProcessRaisedException, match="stopped by SIGTERM after step 3 of 50"):
        mp.spawn(_sigterm_worker, args=(2, _free_port(), str(out)), nprocs=2)
    assert resolve_last(out).name == "step_00000003"
    load_checkpoint(resolve_last(out))  # complete and verified
