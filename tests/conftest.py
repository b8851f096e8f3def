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
