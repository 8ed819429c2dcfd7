"""VM and CP tensor fields as functions over explicit tensors (official ``TensorVMSplit`` / ``TensorCP``).

Layout (the official parameters, see DEVELOPERS.md): for a grid of size ``[X, Y, Z]``

- VM plane k: ``(1, C_k, H_k, W_k)`` with ``W_k = gridSize[MAT_MODE[k][0]]``, ``H_k = gridSize[MAT_MODE[k][1]]``;
- VM / CP line k: ``(1, C_k, L_k, 1)`` with ``L_k = gridSize[VEC_MODE[k]]``.

Every lookup is ``F.grid_sample(mode='bilinear', padding_mode='zeros', align_corners=True)`` exactly as
the official ``compute_densityfeature`` / ``compute_appfeature``; lines are sampled at ``(x=0, y=t)``.
Coordinates are detached, like the official code (no gradient flows into sample positions).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tensorf_common.config import ConfigError
from tensorf_common.geometry import MAT_MODE, VEC_MODE, line_size, plane_size


# ---------------------------------------------------------------------------------------------
# Lookups
# ---------------------------------------------------------------------------------------------


def grid_sample_2d(plane: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookup of a plane (1, C, H, W) at points uv (P, 2) in [-1, 1] -> (P, C).

    ``uv[:, 0]`` indexes the width axis W and ``uv[:, 1]`` the height axis H (``grid_sample``'s x, y).
    """
    c = plane.shape[1]
    out = F.grid_sample(
        plane, uv.detach().view(1, -1, 1, 2), mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out.view(c, -1).T


def grid_sample_1d(line: Tensor, t: Tensor) -> Tensor:
    """Linear lookup of a line (1, C, L, 1) at points t (P,) in [-1, 1] -> (P, C) (official: at x=0, y=t)."""
    c = line.shape[1]
    t = t.detach()
    coords = torch.stack((torch.zeros_like(t), t), dim=-1).view(1, -1, 1, 2)
    out = F.grid_sample(line, coords, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.view(c, -1).T


def vm_pair_features(planes: Sequence[Tensor], lines: Sequence[Tensor], xyz_n: Tensor) -> list[Tensor]:
    """Per-pair products ``plane_k(xyz) * line_k(xyz)``: a list of three (P, C_k) tensors."""
    out = []
    for k in range(len(VEC_MODE)):
        a, b = MAT_MODE[k]
        p = grid_sample_2d(planes[k], xyz_n[:, [a, b]])
        ln = grid_sample_1d(lines[k], xyz_n[:, VEC_MODE[k]])
        out.append(p * ln)
    return out


def vm_features(planes: Sequence[Tensor], lines: Sequence[Tensor], xyz_n: Tensor) -> Tensor:
    """Appearance features before ``basis_mat``: the per-component products concatenated in the
    official order (all of pair 0, then pair 1, then pair 2) -> (P, sum C)."""
    return torch.cat(vm_pair_features(planes, lines, xyz_n), dim=-1)


def vm_density_feature(planes: Sequence[Tensor], lines: Sequence[Tensor], xyz_n: Tensor) -> Tensor:
    """Density feature (P,): the sum over pairs of the summed component products (official order)."""
    total = torch.zeros(xyz_n.shape[0], dtype=xyz_n.dtype, device=xyz_n.device)
    for f in vm_pair_features(planes, lines, xyz_n):
        total = total + f.sum(dim=-1)
    return total


def cp_features(lines: Sequence[Tensor], xyz_n: Tensor) -> Tensor:
    """CP component products ``line_0 * line_1 * line_2`` -> (P, R) (before ``basis_mat`` / the sum)."""
    out = grid_sample_1d(lines[0], xyz_n[:, VEC_MODE[0]])
    for k in range(1, len(VEC_MODE)):
        out = out * grid_sample_1d(lines[k], xyz_n[:, VEC_MODE[k]])
    return out


def cp_density_feature(lines: Sequence[Tensor], xyz_n: Tensor) -> Tensor:
    """CP density feature (P,): the sum of the rank-1 products."""
    return cp_features(lines, xyz_n).sum(dim=-1)


def feature2density(feature: Tensor, shift: float, act: str) -> Tensor:
    """Official ``feature2density``: ``softplus(f + shift)`` or ``relu(f)``."""
    if act == "softplus":
        return F.softplus(feature + shift)
    if act == "relu":
        return F.relu(feature)
    raise ConfigError(f"field.fea2dense_act: unknown activation {act!r}; choose softplus or relu")


# ---------------------------------------------------------------------------------------------
# Shapes and initialisation
# ---------------------------------------------------------------------------------------------


def plane_shape(grid_size: Sequence[int], k: int, comps: int) -> tuple[int, int, int, int]:
    """Official shape (1, C, H, W) of plane k."""
    return (1, int(comps), *plane_size(grid_size, k))


def line_shape(grid_size: Sequence[int], k: int, comps: int) -> tuple[int, int, int, int]:
    """Official shape (1, C, L, 1) of line k."""
    return (1, int(comps), line_size(grid_size, k), 1)


def init_vm(
    grid_size: Sequence[int], n_comp: Sequence[int], scale: float = 0.1, generator: Optional[torch.Generator] = None
) -> tuple[list[Tensor], list[Tensor]]:
    """Official VM init ``scale * randn``. The draws are interleaved plane 0, line 0, plane 1, ...
    like ``init_one_svd``, so the same torch seed gives the official numbers."""
    planes, lines = [], []
    for k in range(len(VEC_MODE)):
        planes.append(scale * torch.randn(plane_shape(grid_size, k, n_comp[k]), generator=generator))
        lines.append(scale * torch.randn(line_shape(grid_size, k, n_comp[k]), generator=generator))
    return planes, lines


def init_cp(
    grid_size: Sequence[int], rank: int, scale: float = 0.2, generator: Optional[torch.Generator] = None
) -> list[Tensor]:
    """Official CP init: three lines ``scale * randn((1, rank, L_k, 1))``."""
    return [scale * torch.randn(line_shape(grid_size, k, rank), generator=generator) for k in range(len(VEC_MODE))]


def grid_size_of(lines: Sequence[Tensor]) -> list[int]:
    """[X, Y, Z] read from the three line lengths."""
    size = [0, 0, 0]
    for k, v in enumerate(VEC_MODE):
        size[v] = int(lines[k].shape[2])
    return size


# ---------------------------------------------------------------------------------------------
# Resize and crop
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def upsample_vm(
    planes: Sequence[Tensor], lines: Sequence[Tensor], reso: Sequence[int]
) -> tuple[list[Tensor], list[Tensor]]:
    """Resize a VM grid to ``reso`` [X, Y, Z] with ``F.interpolate(bilinear, align_corners=True)``
    (official ``up_sampling_VM``)."""
    new_planes, new_lines = [], []
    for k in range(len(VEC_MODE)):
        a, b = MAT_MODE[k]
        new_planes.append(
            F.interpolate(planes[k].detach(), size=(int(reso[b]), int(reso[a])), mode="bilinear", align_corners=True)
        )
        new_lines.append(
            F.interpolate(lines[k].detach(), size=(int(reso[VEC_MODE[k]]), 1), mode="bilinear", align_corners=True)
        )
    return new_planes, new_lines


@torch.no_grad()
def upsample_cp(lines: Sequence[Tensor], reso: Sequence[int]) -> list[Tensor]:
    """Resize CP lines to ``reso`` [X, Y, Z] (official ``up_sampling_Vector``)."""
    return [
        F.interpolate(lines[k].detach(), size=(int(reso[VEC_MODE[k]]), 1), mode="bilinear", align_corners=True)
        for k in range(len(VEC_MODE))
    ]


def shrink_vm(
    planes: Sequence[Tensor], lines: Sequence[Tensor], t_l: Sequence[int], b_r: Sequence[int]
) -> tuple[list[Tensor], list[Tensor]]:
    """Crop a VM grid to the voxel index ranges ``[t_l, b_r)`` per axis (official ``shrink``)."""
    new_planes, new_lines = [], []
    for k in range(len(VEC_MODE)):
        a, b = MAT_MODE[k]
        v = VEC_MODE[k]
        new_planes.append(planes[k].detach()[..., int(t_l[b]) : int(b_r[b]), int(t_l[a]) : int(b_r[a])].clone())
        new_lines.append(lines[k].detach()[..., int(t_l[v]) : int(b_r[v]), :].clone())
    return new_planes, new_lines


def shrink_cp(lines: Sequence[Tensor], t_l: Sequence[int], b_r: Sequence[int]) -> list[Tensor]:
    """Crop CP lines to ``[t_l, b_r)`` per axis."""
    out = []
    for k in range(len(VEC_MODE)):
        v = VEC_MODE[k]
        out.append(lines[k].detach()[..., int(t_l[v]) : int(b_r[v]), :].clone())
    return out
