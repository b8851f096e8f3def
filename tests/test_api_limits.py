"""The Python API at its limits (#22.6): the largest size a model takes follows the model (its position tables),
and a call whose estimated memory exceeds what the device has is refused, both before any work or allocation."""

from __future__ import annotations

import time
import warnings

import pytest
import torch

from flexitok import DecodeConfig, InvalidInputError
from flexitok.errors import OutsideTrainedRegimeWarning
from flexitok.models import flextok as flextok_module
from flexitok.models.flextok import MAX_TABLE_STRETCH, available_memory
from tests.conftest import tiny_model

ONE_STEP = DecodeConfig(steps=1)


@pytest.fixture(scope="module")
def model():
    return tiny_model()  # 32x32 pixels, 8x8 position tables of 4x4 patches


def _fail(*args, **kwargs):
    raise AssertionError("the model ran: the call should have been refused first")


def test_sizes_beyond_the_stretched_tables_are_refused_at_once(model, monkeypatch) -> None:
    assert MAX_TABLE_STRETCH == 4
    assert model.max_image_size("encoder") == model.max_image_size("decoder") == (128, 128)
    monkeypatch.setattr(model.vae, "encode", _fail)
    monkeypatch.setattr(model.vae, "decode", _fail)
    t0 = time.monotonic()
    with pytest.raises(InvalidInputError, match=r"4096x4096 is too large .* cover 32x32 pixels .* \(128x128\)"):
        model.tokenize(torch.zeros(1, 3, 4096, 4096))  # inside the global 4096 limit: 1.1 TB asked for before
    with pytest.raises(InvalidInputError, match=r"1024x1024 is too large for this model's decoder"):
        model.detokenize(torch.zeros(1, 16, dtype=torch.long), ONE_STEP, image_size=1024)
    with pytest.raises(InvalidInputError, match=r"132x128 is too large"):
        model.detokenize_list([torch.zeros(4, dtype=torch.long)] * 2, ONE_STEP, image_size=[(32, 32), (132, 128)])
    with pytest.raises(InvalidInputError, match="too large"):
        model.initial_noise(1, image_size=(32, 512))  # one side is enough
    assert time.monotonic() - t0 < 5


def test_the_largest_accepted_size_runs_with_a_warning(model) -> None:
    with pytest.warns(OutsideTrainedRegimeWarning):
        ids = model.tokenize(torch.zeros(1, 3, 128, 128))
    with pytest.warns(OutsideTrainedRegimeWarning):
        out = model.detokenize(ids[:, :2], ONE_STEP, image_size=(128, 64))
    assert out.shape == (1, 3, 128, 64)


def test_calls_needing_more_memory_than_available_are_refused_before_allocating(model, monkeypatch) -> None:
    monkeypatch.setattr(flextok_module, "available_memory", lambda device: 2**10)  # 1 KiB left
    monkeypatch.setattr(model.vae, "encode", _fail)
    monkeypatch.setattr(model.vae, "decode", _fail)
    with pytest.raises(InvalidInputError, match=r"tokenize of 2 image\(s\) of 32x32 would need about .* GiB, but"):
        model.tokenize(torch.zeros(2, 3, 32, 32))
    with pytest.raises(InvalidInputError, match=r"detokenize of 1 image\(s\) of 64x64 .* GiB is available on cpu"):
        model.detokenize(torch.zeros(1, 4, dtype=torch.long), ONE_STEP, image_size=64)
    with pytest.raises(InvalidInputError, match="tokenize of 1 image"):
        model.tokenize([torch.zeros(3, 32, 32), torch.zeros(3, 64, 32)])  # per size group, all before any runs


def test_memory_estimate_grows_with_batch_size_and_guidance(model) -> None:
    est = model.estimate_call_bytes
    assert 0 < est("encoder", (32, 32), 1) < est("encoder", (32, 32), 4) < est("encoder", (64, 64), 4)
    assert est("decoder", (32, 32), 2, guided=True) > est("decoder", (32, 32), 2, guided=False)
    # The 4096x4096 tokenize of the issue: far beyond any machine (this is what the size limit refuses first).
    assert est("encoder", (4096, 4096), 1) > 2**40
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # native sizes run as before, without a warning
        assert model.tokenize(torch.zeros(2, 3, 32, 32)).shape == (2, 16)


def test_available_memory_of_the_cpu() -> None:
    have = available_memory(torch.device("cpu"))
    assert have is None or have > 2**20
    assert available_memory(torch.device("meta")) is None
