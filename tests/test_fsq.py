from __future__ import annotations

import math

import pytest
import torch

from flexitok.errors import InvalidInputError
from flexitok.nn.fsq import FSQ


@pytest.mark.parametrize("levels", [(8, 8, 8, 5, 5, 5), (8, 5, 5, 5), (3, 4), (2, 7, 6)])
def test_ids_codes_roundtrip_is_a_bijection(levels):
    fsq = FSQ(levels)
    n = math.prod(levels)
    ids = torch.arange(n) if n <= 5000 else torch.randint(0, n, (5000,))
    codes = fsq.ids_to_codes(ids)
    assert codes.shape == (ids.numel(), len(levels))
    assert codes.min() >= -1 and codes.max() <= 1
    assert torch.equal(fsq.codes_to_ids(codes), ids)
    if n <= 5000:  # every id maps to a distinct code
        assert torch.unique(codes, dim=0).shape[0] == n


def test_first_level_is_least_significant_digit():
    fsq = FSQ((8, 8, 8, 5, 5, 5))
    assert fsq._basis.tolist() == [1, 8, 64, 512, 2560, 12800]
    c1 = fsq.ids_to_codes(torch.tensor([0, 1]))
    assert (c1[1] - c1[0]).nonzero().flatten().tolist() == [0]


def test_quantize_hits_every_level_and_matches_ids():
    fsq = FSQ((8, 5))
    z = torch.linspace(-6, 6, 2001)[:, None].expand(-1, 2)
    codes, ids = fsq(z)
    assert torch.unique(codes[:, 0]).numel() == 8 and torch.unique(codes[:, 1]).numel() == 5
    assert torch.equal(fsq.ids_to_codes(ids), codes)


def test_straight_through_gradient():
    fsq = FSQ((8, 5, 5))
    z = torch.randn(4, 3, requires_grad=True)
    codes, _ = fsq(z)
    codes.sum().backward()
    assert z.grad is not None and (z.grad.abs() > 0).all()


def test_out_of_range_ids_are_rejected():
    fsq = FSQ((8, 5))
    with pytest.raises(InvalidInputError, match=r"\[0, 40\)"):
        fsq.ids_to_codes(torch.tensor([40]))
    with pytest.raises(InvalidInputError, match="integer"):
        fsq.ids_to_codes(torch.tensor([1.0]))
