"""Property-based fuzzing of token shard set indexes (#22): every mutated index either reads back completely or
is refused with a DatasetError; counted in the fuzz tally like tests/test_fuzz.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from flexitok.data.base import DatasetError
from flexitok.data.tokens import TokenShardDataset, write_token_shards
from tests.fuzz_support import alarm, budget, record

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v < hi


@pytest.fixture(scope="module")
def good_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    g = torch.Generator().manual_seed(0)
    batches = [{"tokens": torch.randint(0, 1000, (4, 8), generator=g), "label": torch.arange(4) % 3} for _ in range(3)]
    return write_token_shards(batches, tmp_path_factory.mktemp("fz") / "tok", shard_size=5, meta={"vocab_size": 1000})


VALUES = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-2, 14),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["../x", "/etc/passwd", "shard-000000.safetensors", "~/a", "a\\\\b", "", "."]),
    st.none(),
    st.booleans(),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)

# (where, key) -> does a value keep the set valid? (given the good set: 12 items in shards of 5/5/2, 8 tokens,
# ids < 1000, labels 0..2; "open" means the set opens but an item may be refused when read)
LOCATIONS = ["num_items", "format", "version", "meta", "shards", "shard.num_items", "shard.file", "shard.sha256"]
LOCATIONS += ["shard.bytes", "shard", "meta.vocab_size", "meta.n_tokens", "meta.num_classes", "meta.class_names"]


@st.composite
def mutation(draw: Any) -> tuple[str, int, Any]:
    return draw(st.sampled_from(LOCATIONS)), draw(st.integers(0, 2)), draw(VALUES)


def _apply(index: dict[str, Any], where: str, shard: int, value: Any) -> bool:
    """Mutate ``index`` in place; return whether every item must still read back."""
    if where.startswith("shard."):
        key = where.split(".", 1)[1]
        entry = index["shards"][shard]
        valid = value == entry[key] and type(value) is type(entry[key])
        entry[key] = value
        return valid
    if where == "shard":
        index["shards"][shard] = value
        return False
    if where.startswith("meta."):
        key = where.split(".", 1)[1]
        index["meta"][key] = value
        if key == "vocab_size":  # null: not recorded (read as unknown)
            return value is None or _is_int(value, 1000, 2**31)
        if key == "n_tokens":
            return value is None or _is_int(value, 8, 9)
        if key == "num_classes":
            return value is None or _is_int(value, 3, 2**62)
        return value is None or (isinstance(value, list) and not value)  # class names: no list of 3 strings drawn
    original = index[where]
    index[where] = value
    return value == original and type(value) is type(original)


@hypothesis.settings(hypothesis.settings.get_profile("fuzz"), max_examples=budget(120))
@hypothesis.given(m=mutation())
def test_fuzzed_token_shard_index(good_set: Path, tmp_path_factory: pytest.TempPathFactory, m: Any) -> None:
    where, shard, value = m
    root = tmp_path_factory.mktemp("case") / "tok"
    shutil.copytree(good_set, root)
    index = json.loads((root / "index.json").read_text())
    valid = _apply(index, where, shard, value)
    (root / "index.json").write_text(json.dumps(index))
    try:
        with alarm(20):
            ds = TokenShardDataset(root)
            items = [ds[i] for i in range(len(ds))]
        outcome = "accepted" if valid else "silent"
        if valid:
            assert len(items) == 12
    except DatasetError as e:
        outcome, why = ("refused_valid" if valid else "clean_error"), str(e)
        record("token shard index", outcome, why)
        return
    except Exception as e:  # noqa: BLE001 - anything else is the bug this test looks for
        record("token shard index", "traceback", f"{where}={value!r}: {type(e).__name__}: {e}")
        return
    record("token shard index", outcome, f"{where}[{shard}]={value!r}")
