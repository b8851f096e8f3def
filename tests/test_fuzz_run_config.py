"""Property-based fuzzing of run configs (issue 22.3): random dotted overrides of every target's shipped tiny
config, read by the one parser (``load_run_config``). Every input must give a config or a ``ConfigError`` naming
the key, never another exception; an oracle marks the values that must be refused (non-finite numbers, negative
counts, betas outside [0, 1), a seed beyond 64 bits), so accepting one counts as "silent". Outcomes go to the fuzz
tally (tests/fuzz_support.py) under "run configs"."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from flexitok.errors import FlexiTokError
from flexitok.train.config import load_run_config
from flexitok.train.generator import GeneratorTrainConfig
from flexitok.train.tokenizer import TokenizerTrainConfig
from flexitok.train.vae import VAETrainConfig
from tests.fuzz_support import Hang, alarm, budget, record

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings.get_profile("fuzz")
ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "tokenizer": (TokenizerTrainConfig, ROOT / "configs" / "tokenizer-tiny-fmnist.yaml"),
    "vae": (VAETrainConfig, ROOT / "configs" / "vae-tiny-fmnist.yaml"),
    "generator": (GeneratorTrainConfig, ROOT / "configs" / "generator-tiny-fmnist.yaml"),
}
# The generator's config reads its class count from the token shards it names.
BASE = {"generator": [f"data.path={ROOT / 'tests' / 'fixtures' / 'train-regression' / 'fmnist-tokens'}"]}
# key -> the rule an accepted value must satisfy (None: any value the parser takes is fine)
COUNTS = ("train.steps", "train.batch_size", "train.grad_accum", "train.log_every", "train.ckpt_every")
NON_NEGATIVE = ("train.warmup_steps", "train.eval_every", "train.num_workers", "train.keep_checkpoints")
FLOATS = ("train.lr", "train.min_lr", "train.weight_decay", "train.grad_clip", "train.ema_decay")
KEYS = (*COUNTS, *NON_NEGATIVE, *FLOATS, "train.betas", "train.seed", "train.cpu_threads", "train.precision")
TASK_KEYS = {"tokenizer": ("task.cfg_dropout",), "vae": ("task.kl_weight",), "generator": ("task.cond_dropout",)}

_NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**63, 2**64, 7]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "0.5"]),
)
_VALUES = st.one_of(
    _NUMBERS,
    st.sampled_from(["abc", "''", "[]", "[0.9]", "[0.9, 0.99]", "[1.0, 0.5]", "[-0.1, 0.9]", "{a: 1}", "true", "null"]),
    st.lists(_NUMBERS, max_size=3).map(lambda v: "[" + ", ".join(map(str, v)) + "]"),
)


def _as_number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return x


def must_refuse(key: str, text: str) -> bool:
    """Values no valid run may have: what the oracle knows about the train: section."""
    x = _as_number(text)
    if x is not None and not math.isfinite(x):
        return True
    if x is None:
        return False
    if key in COUNTS and x < 1 or key in NON_NEGATIVE and x < 0:
        return True
    return key == "train.seed" and not 0 <= x < 2**64


@settings(FUZZ, max_examples=budget(150))
@given(target=st.sampled_from(sorted(TARGETS)), key_index=st.integers(0, 1000), value=_VALUES)
def test_fuzz_run_config_overrides(target: str, key_index: int, value: Any) -> None:
    cls, path = TARGETS[target]
    keys = (*KEYS, *TASK_KEYS[target])
    key = keys[key_index % len(keys)]
    text = str(value)
    override = f"{key}={text}"
    try:
        with alarm(30):
            load_run_config(cls, path, [*BASE.get(target, []), override])
    except Hang:
        record("run configs", "hang", override)
    except FlexiTokError as e:
        outcome = "clean_error" if key.split(".")[-1] in str(e) or "override" in str(e) else "traceback"
        record("run configs", outcome, f"{override}: the error does not name the key: {e}")
    except Exception as e:  # noqa: BLE001 - any other exception is the bug this test looks for
        record("run configs", "traceback", f"{override}: {type(e).__name__}: {e}")
    else:
        record("run configs", "silent" if must_refuse(key, text) else "accepted", override)
