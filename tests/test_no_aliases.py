"""Removed compatibility aliases stay removed: one name per concept in the package."""

from __future__ import annotations

from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flexitok"


@pytest.mark.parametrize("name", ["euler_sample", "FeatureModelError", "GeneratorTrainingConfig"])
def test_old_alias_is_not_defined_anywhere(name: str) -> None:
    hits = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if name in p.read_text(encoding="utf-8")]
    assert not hits, f"{name} (a removed alias) is back in {hits}"
