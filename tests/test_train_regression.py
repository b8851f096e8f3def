"""The trainer reproduces the recorded per-step metrics and final weights of the shipped configs bit for bit.

The expected numbers were recorded with the 0.1.0 trainer (``tests/train_regression.py``); every refactor of
``flexitok.train`` must leave them unchanged, so the bundled models' training commands stay reproducible. The
expected values are kept per CPU capability (see ``tests/train_regression.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_regression import CASES, CPU_CAPABILITY, EXPECTED, run_case

pytestmark = pytest.mark.usefixtures("one_thread")

_EXPECTED = json.loads(EXPECTED.read_text()) if EXPECTED.is_file() else None


@pytest.mark.parametrize("name", list(CASES))
def test_shipped_config_numerics_are_unchanged(name: str, tmp_path: Path) -> None:
    if _EXPECTED is None:
        pytest.fail(
            f"no expected values for CPU capability {CPU_CAPABILITY} ({EXPECTED.name}); record them on such a machine "
            "with a trainer that reproduces an existing file (tests/train_regression.py)"
        )
    if _EXPECTED["torch"] != torch.__version__:
        pytest.fail(f"expected values were recorded with torch {_EXPECTED['torch']}, running {torch.__version__}")
    got, want = run_case(name, tmp_path), _EXPECTED[name]
    assert [m["step"] for m in got["metrics"]] == [m["step"] for m in want["metrics"]]
    for g, w in zip(got["metrics"], want["metrics"], strict=True):
        assert g == w, f"step {w['step']}: {g} != {w}"
    assert got["hashes"] == want["hashes"]
