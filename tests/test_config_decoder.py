"""The one typed config decoder: YAML run configs (lenient) and config.json (strict) share rules and messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from flexitok.errors import CheckpointError, ConfigError
from flexitok.utils.config_json import Bound, config_from_dict, config_from_json


@dataclass
class Inner:
    depth: int = 2
    kind: Literal["a", "b"] = "a"


@dataclass
class Outer:
    lr: float = 1e-3
    image_size: tuple[int, int] = (8, 8)
    name: str | None = None
    inner: Inner = field(default_factory=Inner)
    FIELD_BOUNDS = {"lr": Bound(0, 1, positive=True)}


def test_yaml_spellings_are_read_and_json_refuses_them() -> None:
    cfg = config_from_dict(Outer, {"lr": "3e-4", "image_size": 32, "name": 2024, "inner": {"depth": 4.0}})
    assert cfg == Outer(lr=3e-4, image_size=(32, 32), name="2024", inner=Inner(depth=4))
    with pytest.raises(CheckpointError, match=r"config.json: config.lr must be a number, got '3e-4'"):
        config_from_json(Outer, {"lr": "3e-4"}, "config.json")
    with pytest.raises(CheckpointError, match=r"config.image_size must be a list"):
        config_from_json(Outer, {"image_size": 32}, "config.json")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"inner": {"dpeth": 3}}, "unknown config key '{w}inner.dpeth'; did you mean '{w}inner.depth'?"),
        ({"inner": {"kind": "c"}}, "{w}inner.kind must be one of ['a', 'b'], got 'c'"),
        ({"lr": 2.0}, "{w}lr must lie in (0, 1], got 2.0"),
        ({"lr": float("nan")}, "{w}lr must be a finite number"),
        ({"inner": {"depth": True}}, "{w}inner.depth must be an integer, got True"),
        ({"image_size": [1, 2, 3]}, "{w}image_size must have 2 items, got 3"),
    ],
)
def test_both_entry_points_give_the_same_message(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as yaml_err:
        config_from_dict(Outer, data)
    assert message.format(w="") in str(yaml_err.value)
    with pytest.raises(CheckpointError) as json_err:
        config_from_json(Outer, data, "config.json")
    assert message.format(w="config.") in str(json_err.value)


def test_only_the_strict_reader_bounds_sizes_by_field_name() -> None:
    assert config_from_dict(Inner, {"depth": 5000}).depth == 5000  # a run config's own FIELD_BOUNDS decide
    with pytest.raises(CheckpointError, match=r"config.depth must be an integer in \[1, 1024\]"):
        config_from_json(Inner, {"depth": 5000}, "config.json")
