"""ml-flextok's detokenize keywords give an error naming the flexitok equivalent."""

from __future__ import annotations

import pytest
import torch

from flexitok import DecodeConfig
from flexitok.errors import InvalidInputError
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"timesteps": 20}, "decode=DecodeConfig(steps=20)"),
        ({"guidance_scale": 7.5}, "decode=DecodeConfig(guidance_scale=7.5)"),
        ({"perform_norm_guidance": True}, "decode=DecodeConfig(apg=True)"),
        ({"vae_image_sizes": 32}, "image_size=256"),
        ({"verbose": False}, "progress=False"),
    ],
)
def test_official_keywords_name_ours(model, kwargs, says):
    tokens = [torch.zeros(1, 4, dtype=torch.long)]  # the official list of [1, l]
    with pytest.raises(InvalidInputError, match="Coming from ml-flextok") as e:
        model.detokenize(tokens, **kwargs)
    assert says in str(e.value)


def test_unknown_keyword_is_still_a_type_error(model):
    with pytest.raises(TypeError, match="unexpected keyword argument 'stepz'"):
        model.detokenize(torch.zeros(1, 4, dtype=torch.long), stepz=3)


def test_official_token_list_decodes_like_a_batch(model, one_thread):
    ids = model.tokenize(torch.zeros(2, 3, *model.image_size))
    official = [ids[i : i + 1, :5] for i in range(2)]  # tokens_list truncated as in the official README
    decode = DecodeConfig(steps=2, guidance_scale=1.0, apg=False)  # = a bare official detokenize(timesteps=2)
    a = model.detokenize(official, decode, generator=torch.Generator().manual_seed(0))
    b = model.detokenize(ids[:, :5], decode, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
