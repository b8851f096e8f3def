"""``detokenize`` has one return type (#21.4): a batch tensor; per-image sizes go through ``detokenize_list`` and
the decoder's latents through ``detokenize_with_latents``. The k ladder lives beside the model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from flexitok import DecodeConfig, InvalidInputError
from flexitok.config import default_ks
from tests.conftest import tiny_model

ONE_STEP = DecodeConfig(steps=1)


def test_detokenize_siblings_agree(one_thread) -> None:
    model = tiny_model()
    tokens = torch.randint(0, model.vocab_size, (2, 6))
    noise = model.initial_noise(2, torch.Generator().manual_seed(0))
    images = model.detokenize(tokens, ONE_STEP, noise=noise)
    assert isinstance(images, torch.Tensor) and images.shape == (2, 3, 32, 32)
    with_latents, latents = model.detokenize_with_latents(tokens, ONE_STEP, noise=noise)
    assert torch.equal(with_latents, images) and latents.shape == (2, 3, 32, 32)
    assert torch.allclose(model.vae.decode(latents), images)
    listed = model.detokenize_list(tokens, ONE_STEP, noise=list(noise), image_size=[(32, 32), (32, 32)])
    assert isinstance(listed, list) and all(torch.equal(a, b) for a, b in zip(listed, images, strict=True))
    with pytest.raises(InvalidInputError, match="use detokenize_list"):
        model.detokenize(tokens, ONE_STEP, image_size=[(32, 32), (32, 32)])  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="an int or an"):
        model.detokenize(tokens, ONE_STEP, image_size="32x32")  # type: ignore[arg-type]


def test_the_k_ladder_is_beside_the_model() -> None:
    assert default_ks(16) == [1, 2, 4, 8, 16] and default_ks(12) == [1, 2, 4, 8, 12] and default_ks(1) == [1]
    assert tiny_model().default_ks() == [1, 2, 4, 8, 16]
    from flexitok.eval import reconstruction

    assert reconstruction.default_ks is default_ks  # one ladder
    # The CLI's shared helpers no longer pull the evaluation package in; the 0.1.0 alias euler_sample is gone.
    code = (
        "import sys, flexitok.cli.common, flexitok.sampling.flow as f; "
        "assert not [m for m in sys.modules if m.startswith('flexitok.eval')]; assert not hasattr(f, 'euler_sample')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
