"""The trainer's ``train:`` section as a typed schema (#22.3): every field typed, in range and finite, refused with
a ConfigError naming the dotted key and what it accepts, from Python, from YAML / overrides and from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexitok.cli.main import main
from flexitok.errors import ConfigError
from flexitok.train.config import load_run_config
from flexitok.train.tokenizer import TokenizerTrainConfig
from flexitok.train.trainer_config import MAX_SEED, TrainerConfig

BAD = [
    ("betas", (0.9, 1.0), "train.betas must be two finite numbers in [0, 1)"),
    ("betas", (-0.1, 0.9), "train.betas must be two finite numbers in [0, 1)"),
    ("betas", (0.9,), "train.betas"),
    ("betas", (0.9, float("nan")), "train.betas"),
    ("betas", "ab", "train.betas"),
    ("num_workers", -1, "train.num_workers must be an integer in [0, "),
    ("cpu_threads", 0, "train.cpu_threads must be an integer in [1, "),
    ("seed", 2**64, "train.seed must be an integer in [0, "),
    ("seed", -1, "train.seed must be an integer in [0, "),
    ("weight_decay", -0.01, "train.weight_decay must be a finite number in [0, inf)"),
    ("weight_decay", float("inf"), "train.weight_decay"),
    ("grad_clip", float("nan"), "train.grad_clip must be a finite number"),
    ("grad_clip", -1.0, "train.grad_clip"),
    ("lr", float("nan"), "train.lr must be a finite number in (0, inf)"),
    ("lr", float("inf"), "train.lr"),
    ("lr", 0.0, "train.lr"),
    ("min_lr", 1.0, "train.min_lr must be a finite number in [0, 0.0001]"),
    ("min_lr", float("nan"), "train.min_lr"),
    ("ema_decay", 1.0, "train.ema_decay must be a finite number in [0, 1)"),
    ("ema_decay", float("nan"), "train.ema_decay"),
    ("steps", 0, "train.steps must be an integer in [1, "),
    ("steps", True, "train.steps"),
    ("batch_size", 0, "train.batch_size"),
    ("grad_accum", 0, "train.grad_accum"),
    ("log_every", 0, "train.log_every"),
    ("ckpt_every", 0, "train.ckpt_every"),
    ("warmup_steps", -1, "train.warmup_steps must be an integer in [0, "),
    ("eval_every", -5, "train.eval_every"),
    ("keep_checkpoints", -1, "train.keep_checkpoints"),
    ("precision", "fp16", "train.precision must be 'fp32' or 'bf16'"),
    ("progress", "yes", "train.progress must be true or false"),
    ("fsdp", 1, "train.fsdp must be true or false"),
    ("out_dir", "", "train.out_dir must be a non-empty path"),
    ("trackers", ("mlflow",), "train.trackers must be a list of ['tensorboard', 'wandb']"),
    ("trackers", "wandb", "train.trackers must be a list of"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_every_invalid_train_value_is_a_config_error_naming_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        TrainerConfig(**{key: value})  # type: ignore[arg-type]
    assert message in str(err.value)


def test_every_field_is_checked() -> None:
    """No field of the section escapes the schema: each has a value that is refused (a new field must add one)."""
    import dataclasses

    covered = {k for k, _, _ in BAD}
    bools = {f.name for f in dataclasses.fields(TrainerConfig) if f.type in ("bool", bool)}
    for name in bools - covered:  # every bool is checked by the same rule
        with pytest.raises(ConfigError, match=f"train.{name} must be true or false"):
            TrainerConfig(**{name: "no"})  # type: ignore[arg-type]
    missing = {f.name for f in dataclasses.fields(TrainerConfig)} - covered - bools
    assert not missing, f"fields without a refused value in BAD: {missing}"


def test_valid_edges_are_accepted() -> None:
    cfg = TrainerConfig(betas=[0, 0.999], seed=MAX_SEED, num_workers=0, cpu_threads=1, weight_decay=0, grad_clip=0)
    assert cfg.betas == (0.0, 0.999) and isinstance(cfg.betas[0], float)
    assert TrainerConfig(lr=1, min_lr=1).lr == 1.0 and TrainerConfig(keep_checkpoints=0, ema_decay=0.0).ema_decay == 0.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.betas=[0.9,1.5]", "train.betas must be two finite numbers in [0, 1)"),
        ("train.lr=.nan", "train.lr must be a finite number"),
        ("train.grad_clip=.inf", "train.grad_clip"),
        ("train.seed=18446744073709551616", "train.seed"),
        ("train.cpu_threads=0", "train.cpu_threads"),
        ("train.num_workers=-2", "train.num_workers"),
    ],
)
def test_yaml_overrides_are_validated(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_run_config(TokenizerTrainConfig, None, [override])


def test_a_binary_config_file_is_a_clean_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "weights.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    assert main(["train", "tokenizer", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error: config file" in err and "not a text" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.yaml"]  # nothing written
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"train:\n  lr: 1\x00\n")
    assert main(["train", "tokenizer", "--config", str(nul)]) == 2
    assert "error: config file" in capsys.readouterr().err


def test_a_cli_override_out_of_range_exits_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "tokenizer", "train.betas=[0.9,1.0]", "train.out_dir=/nonexistent/never"]) == 2
    err = capsys.readouterr().err
    assert "error: train.betas must be two finite numbers in [0, 1), got (0.9, 1.0)" in err


def test_a_warmup_longer_than_the_run_is_allowed_with_a_note() -> None:
    """The documented rule: allowed (smoke runs of real configs), the lr never reaches train.lr, and it says so."""
    assert TrainerConfig(steps=10, warmup_steps=10).warmup_note() is None
    note = TrainerConfig(steps=3, warmup_steps=200, lr=1e-3).warmup_note()
    assert note is not None and "train.warmup_steps (200) > train.steps (3)" in note
    assert f"{1e-3 * 3 / 200:.3g}" in note
