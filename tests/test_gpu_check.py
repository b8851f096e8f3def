"""benchmarks/gpu_check.py: the non-CUDA parts on CPU (--device cpu --tiny): the training-step row and the table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")


def _module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["gpu_check"] = mod  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_gpu_check_tiny_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    gc = _module()
    rc = gc.main(["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1", "--batch-size", "4"])
    out = capsys.readouterr().out
    table = out[out.index("gpu_check on CPU") :].splitlines()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table[3:]}
    assert rows == {"train tiny": "ok", "fsdp world 1 (gloo)": "ok", "resume 2+2 vs 4 (fsdp)": "ok"}
    assert "max |weight diff| = 0 |" in out  # the FSDP resume round trip is bit-identical on CPU
    assert rc == 0


def test_table_format() -> None:
    gc = _module()
    text = gc.format_table([gc.Row("train d12-d12", images_s=812.5, mfu=0.41, peak_gib=30.25, note="n")], "hdr")
    assert "812.5" in text and "41.0%" in text and "30.2" in text and text.startswith("hdr")
