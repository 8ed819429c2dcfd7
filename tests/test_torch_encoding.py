"""torch_reference.encoding: official positional-encoding order and the SH bases."""

from __future__ import annotations

import math

import pytest
import torch

from torch_reference.encoding import eval_sh_bases, positional_encoding


def test_positional_encoding_official_order_no_pi():
    a, b = 0.3, -1.1
    got = positional_encoding(torch.tensor([[a, b]]), 2)[0]
    want = [math.sin(a), math.sin(2 * a), math.sin(b), math.sin(2 * b)]
    want += [math.cos(a), math.cos(2 * a), math.cos(b), math.cos(2 * b)]
    torch.testing.assert_close(got, torch.tensor(want))
    assert positional_encoding(torch.zeros(5, 27), 2).shape == (5, 108)


@pytest.mark.parametrize("deg", [0, 1, 2, 3, 4])
def test_sh_addition_theorem(deg):
    """For real orthonormal SH, sum over m of Y_lm(d)^2 = (2l + 1) / (4 pi) at every unit direction."""
    g = torch.Generator().manual_seed(deg)
    d = torch.randn(64, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    basis = eval_sh_bases(deg, d)
    assert basis.shape == (64, (deg + 1) ** 2)
    for l in range(deg + 1):
        band = basis[:, l * l : (l + 1) ** 2]
        torch.testing.assert_close((band**2).sum(-1), torch.full((64,), (2 * l + 1) / (4 * math.pi), dtype=torch.float64))


def test_sh_signs_at_plus_z():
    basis = eval_sh_bases(2, torch.tensor([[0.0, 0.0, 1.0]]))[0]
    torch.testing.assert_close(basis[:4], torch.tensor([0.28209479177387814, 0.0, 0.4886025119029199, 0.0]))
    torch.testing.assert_close(basis[6], torch.tensor(0.31539156525252005 * 2.0))
    with pytest.raises(ValueError):
        eval_sh_bases(5, torch.zeros(1, 3))
