"""Range and finiteness checks of the run configs: a bad value is a ConfigError naming its dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexitok.errors import ConfigError
from flexitok.train.config import load_run_config
from flexitok.train.generator import load_training_config
from flexitok.train.tokenizer import TokenizerTrainConfig
from flexitok.train.vae import VAETrainConfig

ROOT = Path(__file__).resolve().parents[1]
TOKENS = Path(__file__).parent / "fixtures" / "train-regression" / "fmnist-tokens"


@pytest.mark.parametrize(
    "cls, override, message",
    [
        (TokenizerTrainConfig, "task.cfg_dropout=1.5", "task.cfg_dropout must lie in [0, 1], got 1.5"),
        (TokenizerTrainConfig, "task.t_std=.nan", "task.t_std must be a finite number"),
        (TokenizerTrainConfig, "task.t_std=0", "task.t_std must lie in (0, 20]"),
        (TokenizerTrainConfig, "task.eval_ks=[1,0]", "task.eval_ks must lie in [1, 65536], got 0"),
        (TokenizerTrainConfig, "train.lr=.inf", "train.lr must be a finite number"),
        (VAETrainConfig, "model.scaling_factor=0", "model.scaling_factor must lie in (0, 10000]"),
        (VAETrainConfig, "task.disc_layers=0", "task.disc_layers must lie in [1, 8], got 0"),
        (VAETrainConfig, "task.kl_weight=-1", "task.kl_weight must lie in [0, 1000]"),
        (VAETrainConfig, "model.block_out_channels=[8,0]", "model.block_out_channels must lie in"),
    ],
)
def test_out_of_range_values_name_their_key(cls: type, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_run_config(cls, None, [override])
    assert message in str(e.value)


def test_generator_task_ranges() -> None:
    config = ROOT / "configs" / "generator-tiny-fmnist.yaml"
    with pytest.raises(ConfigError, match=r"task.cond_dropout must lie in \[0, 1\], got 2"):
        load_training_config(config, [f"data.path={TOKENS}", "task.cond_dropout=2"])
    with pytest.raises(
        ConfigError, match=r"^task is not a valid GeneratorTaskConfig: task.cond_dropout must be in \[0, 1\)"
    ):
        load_training_config(config, [f"data.path={TOKENS}", "task.cond_dropout=1"])  # the class's own check


def test_every_shipped_config_is_within_the_ranges() -> None:
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name.startswith("generator"):
            load_training_config(path, [f"data.path={TOKENS}"])
        elif "scaling_factor: auto" in path.read_text():  # read from the VAE run the config names, not here
            load_run_config(TokenizerTrainConfig, path, ["model.vae.scaling_factor=1.0"])
        else:
            load_run_config(VAETrainConfig if "vae" in path.name else TokenizerTrainConfig, path)
