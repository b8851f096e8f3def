"""Loading builds no random weights and needs about the weights' bytes (meta-device build + direct reads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flexitok import FlexTok
from flexitok.config import tiny_config
from flexitok.errors import CheckpointError
from flexitok.utils import weights
from flexitok.utils.weights import materialize_parameters, parameters_on_meta
from tests.conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_meta_build_keeps_the_computed_buffers():
    torch.manual_seed(0)
    real = FlexTok(tiny_config())
    with parameters_on_meta():
        empty = FlexTok(tiny_config())
    assert all(p.device.type == "meta" for p in empty.parameters())
    bufs = dict(real.named_buffers())
    for name, b in empty.named_buffers():  # FSQ constants, position tables: computed, not loaded
        assert b.device.type == "cpu" and torch.equal(b, bufs[name]), name
    materialize_parameters(empty)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in empty.parameters())
    assert nn_module_is_usable(empty)


def nn_module_is_usable(model: FlexTok) -> bool:
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model.tokenize(torch.zeros(1, 3, *model.image_size)).shape == (1, model.n_registers)


def test_from_pretrained_in_bfloat16_equals_the_cast(tmp_path, one_thread):
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    full = FlexTok.from_pretrained(tmp_path / "m")
    half = FlexTok.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    ref = model.to(torch.bfloat16).state_dict()
    for k, v in half.state_dict().items():
        assert v.dtype == ref[k].dtype and torch.equal(v, ref[k]), k
    for k, v in full.state_dict().items():
        assert v.dtype == torch.float32, k
    images = torch.rand(2, 3, *model.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(full.tokenize(images), tiny_model().tokenize(images))


def test_official_checkpoint_in_bfloat16(official_dir):
    full = FlexTok.from_official(official_dir / "model.safetensors")
    half = FlexTok.from_official(official_dir / "model.safetensors", dtype=torch.bfloat16)
    ref = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in full.state_dict().items()}
    for k, v in half.state_dict().items():
        assert torch.equal(v, ref[k]), k


PROBE = r"""
import json, sys, torch, flexitok
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
from flexitok import FlexTok
base = rss("VmRSS:")
model = FlexTok.from_pretrained(sys.argv[1], dtype={"fp32": None, "bf16": torch.bfloat16}[sys.argv[2]])
print(json.dumps({"peak": rss("VmHWM:") - base,
                  "weights": sum(t.numel() * t.element_size() for t in model.state_dict().values())}))
"""


def test_peak_memory_of_loading_is_about_the_weights(tmp_path):
    """A 300 MB model (pixel-space: no diffusers import in the figure) loads within 1.25x its weights, plus
    40 MB for the modules imported on the way (fixed, whatever the model size)."""
    torch.manual_seed(0)
    with parameters_on_meta():
        model = FlexTok(tiny_config(dim=512, depth=8))
    materialize_parameters(model)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(tmp_path / "m")
    del model
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for dtype in ("fp32", "bf16"):
        r = subprocess.run(
            [sys.executable, "-c", PROBE, str(tmp_path / "m"), dtype], capture_output=True, text=True, env=env
        )
        assert r.returncode == 0, r.stderr[-2000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["weights"] > 50e6
        assert out["peak"] <= 1.25 * out["weights"] + 40e6, (dtype, out)


def test_read_into_converts_through_a_small_reused_buffer(tmp_path, monkeypatch):
    """A tensor many times the conversion buffer (and not a multiple of it) arrives cast exactly; a file
    cut short after opening is a CheckpointError naming the tensor, not a silently partial tensor."""
    monkeypatch.setattr(weights, "READ_CHUNK_BYTES", 1000)  # 250 float32 values per read
    data = {"w": torch.randn(37, 91, generator=torch.Generator().manual_seed(0)), "b": torch.randn(3)}
    weights.write_safetensors_streaming(tmp_path / "m.safetensors", data)
    with weights.WeightsFile(tmp_path / "m.safetensors") as f:
        for dtype in (torch.bfloat16, torch.float16, torch.float64):
            for k, v in data.items():
                dest = torch.empty(v.shape, dtype=dtype)
                f.read_into(k, dest)
                assert torch.equal(dest, v.to(dtype)), (k, dtype)
        assert f._chunk is not None and f._chunk.numel() <= 1004  # one buffer, not a copy of the tensor
    with weights.WeightsFile(tmp_path / "m.safetensors") as f:
        os.truncate(tmp_path / "m.safetensors", os.path.getsize(tmp_path / "m.safetensors") - 600)  # cut after open
        with pytest.raises(CheckpointError, match="'w'"):
            f.read_into("w", torch.empty(37, 91, dtype=torch.bfloat16))


def test_all_finite_is_exact_without_a_full_size_temporary():
    big = torch.full((70_000,), 60_000.0, dtype=torch.float16)  # finite values whose sum overflows float16
    assert weights.all_finite(big)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for bad in (float("nan"), float("inf"), -float("inf")):
            t = torch.randn(300, 7).to(dtype)
            t[123, 4] = bad
            assert not weights.all_finite(t, chunk=64), (dtype, bad)
            assert not weights.all_finite(t.t(), chunk=64), (dtype, bad)  # non-contiguous
        assert weights.all_finite(torch.randn(300, 7).to(dtype), chunk=64)
    both = torch.tensor([float("inf"), -float("inf"), 1.0])  # the sum is NaN: still caught
    assert not weights.all_finite(both)
    assert weights.all_finite(torch.empty(0)) and weights.all_finite(torch.arange(5))
    big[-1] = float("inf")
    assert not weights.all_finite(big, chunk=4096)
