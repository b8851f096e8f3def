"""DecodeConfig: the one shape of decoder settings, from the CLI flags and run configs to detokenize."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from flexitok import DecodeConfig
from flexitok.cli.common import add_decode_args, decode_config
from flexitok.errors import InvalidInputError
from flexitok.train.config import load_run_config
from tests.conftest import tiny_model


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"guidance_scale": float("nan")}, "finite"),
        ({"guidance_scale": "7.5"}, "number"),
        ({"apg": 1}, "apg"),
        ({"seed": 1.0}, "seed"),
    ],
)
def test_bad_values_are_refused(kwargs, msg) -> None:
    with pytest.raises(InvalidInputError, match=msg):
        DecodeConfig(**kwargs)


def test_defaults_and_serialisation() -> None:
    d = DecodeConfig(guidance_scale=3)
    assert d.guidance_scale == 3.0 and isinstance(d.guidance_scale, float)
    assert d.to_dict() == {"steps": 20, "guidance_scale": 3.0, "apg": True, "seed": 0}
    assert DecodeConfig(**d.to_dict()) == d
    assert DecodeConfig(apg=False).guider() is None and DecodeConfig().guider() is not None
    with pytest.raises(InvalidInputError, match="schedule"):
        DecodeConfig(guidance_scale=lambda t: 2.0).to_dict()


def test_detokenize_draws_noise_from_the_seed() -> None:
    model = tiny_model()
    tokens = torch.randint(0, model.vocab_size, (2, model.n_registers))
    decode = DecodeConfig(steps=2, seed=11)
    by_seed = model.detokenize(tokens, decode)
    by_generator = model.detokenize(tokens, decode, generator=torch.Generator().manual_seed(11))
    by_noise = model.detokenize(tokens, decode, noise=model.initial_noise(2, torch.Generator().manual_seed(11)))
    assert torch.equal(by_seed, by_generator) and torch.equal(by_seed, by_noise)
    other = model.detokenize(tokens, dataclasses.replace(decode, seed=12))
    assert not torch.allclose(by_seed, other)


def _parse(argv: list[str], **kwargs) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_decode_args(p, **kwargs)
    return p.parse_args(argv)


def test_cli_flags_make_a_decode_config() -> None:
    assert decode_config(_parse([])) == DecodeConfig()
    args = _parse(["--steps", "5", "--guidance-scale", "2", "--no-apg", "--seed", "9"])
    assert decode_config(args) == DecodeConfig(steps=5, guidance_scale=2.0, apg=False, seed=9)
    args = _parse(
        ["--decoder-guidance", "4"], defaults=DecodeConfig(guidance_scale=3.0), guidance_flag="--decoder-guidance"
    )
    assert decode_config(args) == DecodeConfig(guidance_scale=4.0)
    assert not hasattr(_parse([], seed=False), "seed")


def test_cli_flags_without_defaults_keep_the_base() -> None:
    base = DecodeConfig(steps=7, guidance_scale=3.5, apg=False, seed=1234)
    assert decode_config(_parse([], defaults=None), base) == base
    args = _parse(["--apg", "--seed", "2"], defaults=None)
    assert decode_config(args, base) == dataclasses.replace(base, apg=True, seed=2)


def test_run_config_partial_eval_decode_keeps_the_task_defaults() -> None:
    from flexitok.train.tokenizer import TokenizerTrainConfig

    cfg = load_run_config(TokenizerTrainConfig, None, ["task.eval_decode.steps=5"])
    assert cfg.task.eval_decode == DecodeConfig(steps=5, guidance_scale=1.0, apg=False, seed=0)
    cfg = load_run_config(TokenizerTrainConfig, None, [])
    assert cfg.task.eval_decode == DecodeConfig(steps=20, guidance_scale=1.0, apg=False, seed=0)
