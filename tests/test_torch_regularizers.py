"""torch_reference.regularizers against hand computations."""

from __future__ import annotations

import torch

from torch_reference.regularizers import density_l1, ortho_loss, tv_loss, tv_single


def test_density_l1_sum_of_mean_abs():
    a = torch.tensor([[1.0, -3.0]])  # mean |a| = 2
    b = torch.tensor([-0.5, 0.5, 1.5, -1.5])  # mean |b| = 1
    torch.testing.assert_close(density_l1([a, b]), torch.tensor(3.0))
    # the JAX-style dict gives the same (interleaved, official order)
    torch.testing.assert_close(density_l1({"planes": [a], "lines": [b]}), torch.tensor(3.0))
    torch.testing.assert_close(density_l1({"lines": [b, b]}), torch.tensor(2.0))


def test_tv_single_by_hand():
    x = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]).view(1, 1, 2, 3)
    # dh: [2, 1, -1] -> 6 over C (H-1) W = 3; dw: [1, 2, 0, 0] -> 5 over C H (W-1) = 4
    torch.testing.assert_close(tv_single(x), torch.tensor(2 * (6 / 3 + 5 / 4)))
    # a line (W = 1): the width term has count max(0, 1) and sum 0
    line = torch.tensor([0.0, 2.0, 3.0]).view(1, 1, 3, 1)
    torch.testing.assert_close(tv_single(line), torch.tensor(2 * (4 + 1) / 2.0))
    # batch of 2 identical tensors: sums double, divided by B = 2
    torch.testing.assert_close(tv_single(torch.cat([x, x])), tv_single(x))


def test_tv_loss_official_scales():
    x = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]).view(1, 1, 2, 3)
    torch.testing.assert_close(tv_loss([x, x]), 2 * tv_single(x) * 1e-2)
    line = torch.tensor([0.0, 2.0, 3.0]).view(1, 1, 3, 1)
    torch.testing.assert_close(tv_loss({"planes": [x], "lines": [line]}), tv_single(x) * 1e-2)
    torch.testing.assert_close(tv_loss({"lines": [line]}), tv_single(line) * 1e-3)


def test_ortho_loss_mean_abs_off_diagonal():
    line = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 1.0]]).view(1, 2, 3, 1)
    # Gram [[14, 5], [5, 2]] -> off-diagonal |5|, |5| -> mean 5
    torch.testing.assert_close(ortho_loss([line]), torch.tensor(5.0))
    eye = torch.eye(3).view(1, 3, 3, 1)
    torch.testing.assert_close(ortho_loss([eye, line]), torch.tensor(5.0))
    # one component: no off-diagonal, adds 0 (the official code gives NaN)
    torch.testing.assert_close(ortho_loss([torch.ones(1, 1, 4, 1), line]), torch.tensor(5.0))
