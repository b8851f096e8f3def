from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "official-tiny"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def official_dir() -> Path:
    return FIXTURE


@pytest.fixture(scope="session")
def cases() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(FIXTURE / "cases.safetensors"))


@pytest.fixture(scope="session")
def cases_meta() -> dict:
    return json.loads((FIXTURE / "cases.json").read_text())


def tiny_vae_config(latent_channels: int = 4, blocks: int = 2, groups: int = 4) -> dict:
    """A very small diffusers AutoencoderKL config (downsampling 2^(blocks-1))."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * blocks,
        "up_block_types": ["UpDecoderBlock2D"] * blocks,
        "block_out_channels": [8] * blocks,
        "layers_per_block": 1,
        "latent_channels": latent_channels,
        "norm_num_groups": groups,
    }


@pytest.fixture
def one_thread():
    """Tiny models on a shared CPU run far faster without intra-op threading."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model(seed: int = 0):
    """A tiny random FlexTok whose zero-initialised (adaLN-zero) weights are randomised too, so that its
    reconstructions depend on the tokens."""
    from flexitok.config import tiny_config
    from flexitok.models.flextok import FlexTok

    torch.manual_seed(seed)
    model = FlexTok(tiny_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().any():
                p.normal_(0, 0.05)
    return model


def bilinear_align_corners(table, size: tuple[int, int]):
    """Reference bilinear resize with corners aligned, in float64 numpy: ``[D, H, W]`` -> ``[D, h, w]``; output
    index i samples input position i * (H - 1) / (h - 1)."""
    import numpy as np

    d, hh, ww = table.shape
    out = np.zeros((d, *size))
    for i in range(size[0]):
        y = 0.0 if size[0] == 1 else i * (hh - 1) / (size[0] - 1)
        y0 = min(int(np.floor(y)), hh - 1)
        y1, fy = min(y0 + 1, hh - 1), y - y0
        for j in range(size[1]):
            x = 0.0 if size[1] == 1 else j * (ww - 1) / (size[1] - 1)
            x0 = min(int(np.floor(x)), ww - 1)
            x1, fx = min(x0 + 1, ww - 1), x - x0
            out[:, i, j] = (
                (1 - fy) * (1 - fx) * table[:, y0, x0]
                + (1 - fy) * fx * table[:, y0, x1]
                + fy * (1 - fx) * table[:, y1, x0]
                + fy * fx * table[:, y1, x1]
            )
    return out


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the fuzz suite's tally (tests/fuzz_support.py) when it ran; FLEXITOK_FUZZ_TALLY=path writes it."""
    import os
    import sys

    support = sys.modules.get("tests.fuzz_support")
    if support is None or not support.TALLY:
        return
    terminalreporter.write_line(support.summary())
    if os.environ.get("FLEXITOK_FUZZ_TALLY"):
        support.write_tally(os.environ["FLEXITOK_FUZZ_TALLY"])
