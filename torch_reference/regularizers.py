"""Regularisers over explicit grid tensors (official ``density_L1``, ``TVLoss``, ``vector_comp_diffs``).

Scale factors the official model methods apply on top (``TV_loss_density`` multiplies each plane's
TV by 1e-2 for VM, each line's by 1e-3 for CP) are arguments here, with the official VM default.
"""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import torch
from torch import Tensor

Grid = Union[Sequence[Tensor], Mapping[str, Sequence[Tensor]]]
"""A sequence of tensors, or the JAX twin's ``{"planes": [...], "lines": [...]}`` (CP: lines only)."""


def _interleaved(grid: Grid) -> list[Tensor]:
    if isinstance(grid, Mapping):
        planes, lines = list(grid.get("planes", [])), list(grid["lines"])
        if not planes:
            return lines
        return [t for k in range(len(lines)) for t in (planes[k], lines[k])]
    return list(grid)


def density_l1(grid: Grid) -> Tensor:
    """``sum_t mean(|t|)`` over the tensors of ``grid``, in order.

    Official VM ``density_L1`` is ``density_l1([plane0, line0, plane1, line1, plane2, line2])``
    (also what ``{"planes", "lines"}`` gives); CP is ``density_l1(density_lines)``.
    """
    tensors = _interleaved(grid)
    total = torch.zeros((), dtype=tensors[0].dtype, device=tensors[0].device)
    for t in tensors:
        total = total + torch.mean(torch.abs(t))
    return total


def tv_single(x: Tensor) -> Tensor:
    """Official ``TVLoss`` of one (B, C, H, W) tensor:
    ``2 * (sum(dh^2) / (C (H-1) W) + sum(dw^2) / max(C H (W-1), 1)) / B``."""
    b, c, h, w = x.shape
    count_h = c * (h - 1) * w
    count_w = max(c * h * (w - 1), 1)
    h_tv = torch.pow(x[:, :, 1:, :] - x[:, :, : h - 1, :], 2).sum()
    w_tv = torch.pow(x[:, :, :, 1:] - x[:, :, :, : w - 1], 2).sum()
    return 2 * (h_tv / count_h + w_tv / count_w) / b


def tv_loss(planes: Grid, scale: float = 1e-2) -> Tensor:
    """``sum_k TVLoss(plane_k) * scale`` (official ``TV_loss_density``/``TV_loss_app``: scale 1e-2 for
    VM planes; 1e-3 for CP lines). Given a ``{"planes", "lines"}`` dict, applies the official rule
    itself: the planes at 1e-2 when there are planes, else the lines at 1e-3 (``scale`` is ignored)."""
    if isinstance(planes, Mapping):
        if planes.get("planes"):
            return tv_loss(list(planes["planes"]), 1e-2)
        return tv_loss(list(planes["lines"]), 1e-3)
    total = torch.zeros((), dtype=planes[0].dtype, device=planes[0].device)
    for p in planes:
        total = total + tv_single(p) * scale
    return total


def ortho_loss(lines: Sequence[Tensor]) -> Tensor:
    """Official ``vectorDiffs``: for each line (1, C, L, 1), the mean absolute off-diagonal entry of
    its component Gram matrix ``V V^T`` (C, C), summed over lines.

    Deliberate difference: a line with a single component has no off-diagonal entry and adds 0
    (the official mean over an empty tensor is NaN).
    """
    total = torch.zeros((), dtype=lines[0].dtype, device=lines[0].device)
    for ln in lines:
        n_comp, n_size = ln.shape[1], ln.shape[2]
        if n_comp < 2:
            continue
        v = ln.reshape(n_comp, n_size)
        dotp = v @ v.T
        off = dotp.reshape(-1)[1:].reshape(n_comp - 1, n_comp + 1)[..., :-1]
        total = total + torch.mean(torch.abs(off))
    return total
