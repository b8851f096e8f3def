"""Run configs (YAML + dotted overrides), presets in configs/, and the ``flexitok train`` CLI end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flexitok.cli.main import main
from flexitok.cli.train import TARGETS
from flexitok.config import preset
from flexitok.train.config import ConfigError, load_run_config, parse_override
from flexitok.train.tokenizer import TokenizerTrainConfig
from flexitok.train.vae import VAETrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"preset": "tiny", "encoder": {"n_registers": 8}},
                "data": {"kind": "fashion_mnist", "image_size": 32},
                "train": {"lr": "3e-4", "betas": [0.9, 0.95], "steps": 10},
                "task": {"k_sampling": "uniform", "eval_ks": [1, 8]},
            }
        )
    )
    cfg = load_run_config(
        TokenizerTrainConfig,
        path,
        [
            "train.lr=1e-3",
            "data.limit=100",
            "model.decoder.transformer.depth=3",
            "task.repa_layer=1",
            "train.precision=fp32",
            "model.image_size=32",
        ],
    )
    assert cfg.train.lr == 1e-3 and cfg.train.betas == (0.9, 0.95) and cfg.train.steps == 10
    assert cfg.data.limit == 100 and cfg.model.encoder.n_registers == 8
    assert cfg.model.decoder.transformer.depth == 3 and cfg.model.encoder.transformer.depth == 2  # tiny default
    assert cfg.model.image_size == (32, 32) and cfg.task.eval_ks == (1, 8) and cfg.task.repa_layer == 1


def test_preset_name_model_and_override() -> None:
    cfg = load_run_config(TokenizerTrainConfig, None, ["model=d12-d12", "model.encoder.n_registers=128"])
    ref = preset("d12-d12")
    assert cfg.model.decoder == ref.decoder and cfg.model.encoder.n_registers == 128


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "did you mean 'train.lr'"),
        ("trian.lr=1", "unknown config key 'trian'"),
        ("model.encoder.nregisters=4", "model.encoder.n_registers"),
        ("train.lr=fast", "train.lr must be a number"),
        ("train.steps=2.5", "train.steps must be an integer"),
        ("task.k_sampling=fib", "k_sampling"),
        ("train.precision=fp16", "precision"),
        ("model=huge", "unknown preset"),
        ("train.lr", "section.key=value"),
        ("train.lr.x=1", "train.lr must be a number"),
    ],
)
def test_bad_keys_and_values_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(TokenizerTrainConfig, None, [override])


def test_parse_override_types() -> None:
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=true") == (["a"], True)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("tokenizer-tiny-fmnist.yaml", TokenizerTrainConfig),
        ("tokenizer-d12-d12.yaml", TokenizerTrainConfig),
        ("tokenizer-d18-d28.yaml", TokenizerTrainConfig),
        ("vae-tiny-fmnist.yaml", VAETrainConfig),
    ],
)
def test_shipped_configs_load(name: str, cls: type) -> None:
    cfg = load_run_config(cls, CONFIGS / name)
    assert cfg.train.steps > 0
    if cls is TokenizerTrainConfig and "d18-d28" in name:
        assert cfg.model.decoder.transformer.depth == 28 and cfg.model.encoder.transformer.depth == 18
        assert cfg.model.n_registers == 256 and cfg.model.image_size == (256, 256)


def test_train_targets_are_library_objects() -> None:
    from flexitok.train import generator, tokenizer, vae

    assert TARGETS == {"tokenizer": tokenizer.TARGET, "vae": vae.TARGET, "generator": generator.TARGET}
    assert tokenizer.TARGET.config_class is TokenizerTrainConfig  # the run config lives with its target
    with pytest.raises(SystemExit) as e:  # argparse: the target names are the choices
        main(["train", "nope"])
    assert e.value.code == 2


def _tiny_run_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"preset": "tiny", "image_size": [16, 16], "encoder": {"n_registers": 4}},
                "data": {"kind": "skimage", "image_size": 16, "limit": 8},
                "train": {
                    "out_dir": str(tmp_path / "run"),
                    "steps": 2,
                    "batch_size": 4,
                    "log_every": 1,
                    "ckpt_every": 1,
                    "eval_every": 2,
                    "progress": False,
                },
                "task": {"eval_images": 2, "eval_decode": {"steps": 2}, "eval_ks": [1, 4]},
            }
        )
    )
    return path


def test_cli_train_tokenizer_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _tiny_run_yaml(tmp_path)
    assert main(["train", "tokenizer", "--config", str(path)]) == 0
    run = tmp_path / "run"
    assert (run / "last").resolve().name == "step_00000002"
    assert (run / "model" / "config.json").is_file() and (run / "config.yaml").is_file()
    assert (run / "eval" / "recon_step00000002.png").is_file()
    # Without --resume an existing run is never clobbered; with it, training continues to the new step count.
    assert main(["train", "tokenizer", "--config", str(path)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "tokenizer", "--config", str(path), "--resume", "train.steps=3"]) == 0
    assert (run / "last").resolve().name == "step_00000003"


def test_cli_reports_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _tiny_run_yaml(tmp_path)
    assert main(["train", "tokenizer", "--config", str(path), "train.lrr=1"]) == 2
    assert "did you mean 'train.lr'" in capsys.readouterr().err
    assert main(["train", "tokenizer", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["train", "tokenizer", "--config", str(path), "data.image_size=32"]) == 2
    assert "does not match" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written on a config error


@pytest.mark.parametrize(
    "name", ["generator-tiny-fmnist.yaml", "generator-default-fmnist.yaml", "generator-default-fmnist-text.yaml"]
)
def test_generator_configs_use_the_same_typed_parser(name: str) -> None:
    from flexitok.train.generator import GeneratorTrainConfig

    shards = Path(__file__).parent / "fixtures" / "train-regression" / "fmnist-tokens"
    cfg = load_run_config(GeneratorTrainConfig, CONFIGS / name, [f"data.path={shards}", "train.lr=3e-4"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.betas, tuple)  # YAML 1.1 reads 3e-4 as a string
    assert cfg.model.vocab_size == 1000 and cfg.model.n_tokens == 32  # defaults from the shards' index
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        load_run_config(GeneratorTrainConfig, CONFIGS / name, [f"data.path={shards}", "train.lrr=1"])
    with pytest.raises(ConfigError, match="data.path"):
        load_run_config(GeneratorTrainConfig, None, [])
