"""Trainer faults and resume semantics (#22.3, #20.6): ``--allow-config-change`` really applies the new optimizer
settings (or refuses what it cannot), disk full / file-size limit during a save, SIGTERM, and logs cut back to
the checkpoint's step on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexitok.errors import CheckpointError
from flexitok.train.checkpoint import load_checkpoint, resolve_last
from flexitok.train.optim import lr_lambda
from flexitok.train.trainer import train
from tests.test_train_integrity import Images, _cfg, _task

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
