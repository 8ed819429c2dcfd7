"""The occupancy (alpha) mask, box shrinking and ray filtering (official ``updateAlphaMask``,
``AlphaGridMask``, ``shrink``, ``filtering_rays``).

Layout (checked against the official code, see ``shared/reference/official-tensorf-notes.md``): the
mask volume is stored (Z, Y, X), which is what ``grid_sample`` expects of a (1, 1, D, H, W) volume
queried at (x, y, z). A point is inside the mask where the trilinear lookup of the 0/1 volume is > 0.

Deliberate difference: :func:`build_alpha_mask` returns ``None`` for the box of an empty mask (the
official code crashes in ``amin`` there, issues #4 and #60).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .sampling import ray_aabb_hit, sample_ray


def dense_grid_points(aabb, grid_size: Sequence[int]) -> Tensor:
    """Grid points (X, Y, Z, 3) spanning the box corner to corner (official ``getDenseAlpha``):
    ``aabb[0] * (1 - s) + aabb[1] * s`` with ``s = linspace(0, 1, G)`` per axis."""
    box = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
    gx, gy, gz = (int(g) for g in grid_size)
    samples = torch.stack(
        torch.meshgrid(
            torch.linspace(0, 1, gx, device=box.device),
            torch.linspace(0, 1, gy, device=box.device),
            torch.linspace(0, 1, gz, device=box.device),
            indexing="ij",
        ),
        dim=-1,
    )
    return box[0] * (1 - samples) + box[1] * samples


def alpha_from_sigma(sigma: Tensor, step: float) -> Tensor:
    """``1 - exp(-sigma * step)`` with the plain step size (official: no ``distance_scale``, issue #14)."""
    return 1 - torch.exp(-sigma * step)


def dilate_and_threshold(alpha_xyz: Tensor, thres: float) -> Tensor:
    """(X, Y, Z) alpha -> (Z, Y, X) bool: clamp to [0, 1], transpose, 3x3x3 max-pool (stride 1), ``>= thres``."""
    alpha = alpha_xyz.clamp(0, 1).transpose(0, 2).contiguous()[None, None]
    return F.max_pool3d(alpha, kernel_size=3, padding=1, stride=1)[0, 0] >= thres


def mask_bounds(mask: Tensor, aabb) -> Optional[Tensor]:
    """Box (2, 3) of the set grid points of a (Z, Y, X) mask over ``aabb``; None when the mask is empty.

    A grid point's x depends only on its x index, so the official ``amin``/``amax`` over all kept
    points equals the min/max over the kept x indices, computed with the same float formula
    ``aabb[0] * (1 - s) + aabb[1] * s``, ``s = linspace(0, 1, n)``.
    """
    if not bool(mask.any()):
        return None
    box = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3).to(mask.device)
    keep_xyz = (mask.any(dim=(0, 1)), mask.any(dim=(0, 2)), mask.any(dim=(1, 2)))  # per x, y, z index
    lo, hi = [], []
    for axis, keep in enumerate(keep_xyz):
        s = torch.linspace(0, 1, keep.shape[0], device=box.device)
        coord = box[0, axis] * (1 - s) + box[1, axis] * s
        lo.append(coord[keep].amin())
        hi.append(coord[keep].amax())
    return torch.stack((torch.stack(lo), torch.stack(hi)))


def build_alpha_mask(alpha_xyz: Tensor, aabb, thres: float) -> tuple[Tensor, Optional[Tensor]]:
    """Mask and tight box from a dense alpha grid (official ``updateAlphaMask`` after the alpha).

    Args:
        alpha_xyz: (X, Y, Z) alpha at :func:`dense_grid_points` of ``aabb``.
        aabb: (2, 3) box of the dense grid.
        thres: voxels whose dilated alpha is ``>= thres`` are kept.

    Returns:
        mask (Z, Y, X) bool after a 3x3x3 max-pool dilation and the threshold, and the (2, 3) box of
        the kept grid points, or None when no voxel is kept (the official code crashes there).
    """
    mask = dilate_and_threshold(alpha_xyz, thres)
    return mask, mask_bounds(mask, aabb)


def query_alpha_mask(mask: Tensor, mask_aabb, xyz: Tensor) -> Tensor:
    """Whether points (..., 3) are inside the mask (Z, Y, X) (bool or 0/1 float): trilinear lookup
    ``> 0`` (official ``sample_alpha``; points outside the mask box read zero)."""
    vol = mask.to(dtype=xyz.dtype).view(1, 1, *mask.shape[-3:])
    box = torch.as_tensor(mask_aabb, dtype=xyz.dtype, device=xyz.device).reshape(2, 3)
    inv = 1.0 / (box[1] - box[0]) * 2
    xyz_n = (xyz - box[0]) * inv - 1
    vals = F.grid_sample(vol, xyz_n.reshape(1, -1, 1, 1, 3), align_corners=True).view(-1)
    return (vals > 0).view(xyz.shape[:-1])


class AlphaGridMask:
    """The official mask object: ``aabb`` (2, 3), ``alpha_volume`` (1, 1, Z, Y, X) of 0/1 floats and
    ``gridSize`` [X, Y, Z]. It holds no parameters (nothing of it is in the state_dict)."""

    def __init__(self, aabb, alpha_volume: Tensor) -> None:
        self.alpha_volume = alpha_volume.float().reshape(1, 1, *alpha_volume.shape[-3:])
        self.aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3).to(self.alpha_volume.device)
        z, y, x = self.alpha_volume.shape[-3:]
        self.gridSize = [int(x), int(y), int(z)]

    @property
    def mask(self) -> Tensor:
        """The volume as a (Z, Y, X) bool tensor."""
        return self.alpha_volume[0, 0] > 0.5

    def sample_alpha(self, xyz: Tensor) -> Tensor:
        """Trilinear mask value at world points (..., 3) -> (P,) (the official flat output)."""
        box = self.aabb.to(xyz)
        xyz_n = (xyz - box[0]) * (1.0 / (box[1] - box[0]) * 2) - 1
        vol = self.alpha_volume.to(xyz)
        return F.grid_sample(vol, xyz_n.reshape(1, -1, 1, 1, 3), align_corners=True).view(-1)

    def contains(self, xyz: Tensor) -> Tensor:
        """``sample_alpha > 0`` shaped like ``xyz[..., 0]``."""
        return query_alpha_mask(self.alpha_volume[0, 0], self.aabb, xyz)

    def to(self, device) -> "AlphaGridMask":
        return AlphaGridMask(self.aabb.to(device), self.alpha_volume.to(device))

    def packed(self) -> tuple[tuple[int, ...], np.ndarray]:
        """``(shape (1, 1, Z, Y, X), np.packbits of the flattened volume)``: the official checkpoint form."""
        volume = self.alpha_volume.bool().cpu().numpy()
        return tuple(int(s) for s in volume.shape), np.packbits(volume.reshape(-1))

    @classmethod
    def from_packed(cls, shape: Sequence[int], packed, aabb) -> "AlphaGridMask":
        """Inverse of :meth:`packed` (official ``load``: unpackbits, reshape); ``packed`` is a uint8
        numpy array or CPU tensor."""
        shape = tuple(int(s) for s in shape)
        bits = packed.cpu().numpy() if isinstance(packed, Tensor) else np.asarray(packed)
        volume = np.unpackbits(bits)[: int(np.prod(shape))].reshape(shape)
        return cls(torch.as_tensor(aabb).float(), torch.from_numpy(volume).float())


def shrink_box(
    aabb, grid_size: Sequence[int], new_aabb, mask_grid_size: Sequence[int]
) -> tuple[list[int], list[int], Tensor, list[int]]:
    """Voxel ranges and box for cropping the grid to ``new_aabb`` (official ``shrink``).

    ``t_l = round((min - aabb0) / units)``, ``b_r = min(round((max - aabb0) / units) + 1, gridSize)``
    with ``units = (aabb1 - aabb0) / (gridSize - 1)``. When the mask was built at another resolution
    than the grid, the box is snapped to the kept grid points:
    ``aabb0 + (aabb1 - aabb0) * [t_l, b_r - 1] / (gridSize - 1)`` (official interpolation form).

    Returns:
        t_l [3], b_r [3] (crop ``[t_l, b_r)`` per axis [X, Y, Z]), the new box (2, 3) and the new grid
        size ``b_r - t_l``.
    """
    box = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
    nbox = torch.as_tensor(new_aabb, dtype=torch.float32).reshape(2, 3).to(box.device)
    gs = torch.as_tensor([int(g) for g in grid_size], dtype=torch.long, device=box.device)
    units = (box[1] - box[0]) / (gs - 1)
    t_l = torch.round((nbox[0] - box[0]) / units).long()
    b_r = torch.round((nbox[1] - box[0]) / units).long() + 1
    b_r = torch.stack([b_r, gs]).amin(0)
    if [int(g) for g in mask_grid_size] != gs.tolist():
        t_l_r, b_r_r = t_l / (gs - 1), (b_r - 1) / (gs - 1)
        corrected = torch.zeros_like(nbox)
        corrected[0] = (1 - t_l_r) * box[0] + t_l_r * box[1]
        corrected[1] = (1 - b_r_r) * box[0] + b_r_r * box[1]
        nbox = corrected
    return t_l.tolist(), b_r.tolist(), nbox, (b_r - t_l).tolist()


def rays_hit_mask(
    rays_o: Tensor,
    rays_d: Tensor,
    aabb,
    near: float,
    far: float,
    step: float,
    mask: Tensor,
    mask_aabb,
    n_samples: int = 256,
) -> Tensor:
    """Whether any of ``n_samples`` evaluation samples of each ray falls in the mask -> (R,) bool
    (official ``filtering_rays``, the mask branch; samples are not restricted to the box)."""
    _, xyz, _ = sample_ray(rays_o, rays_d, aabb, near, far, step, n_samples, jitter=None)
    return query_alpha_mask(mask, mask_aabb, xyz).any(-1)


@torch.no_grad()
def filter_rays(
    rays_o: Tensor,
    rays_d: Tensor,
    aabb,
    *,
    near: float = 0.0,
    far: float = 1e10,
    step_size: float = 0.0,
    mask: Optional[Tensor] = None,
    mask_aabb=None,
    n_samples: int = 256,
    chunk: int = 10240 * 5,
) -> Tensor:
    """Which rays to keep for training (official ``filtering_rays``) -> (R,) bool.

    Without ``mask`` (``bbox_only``): rays whose line crosses the box. With a mask (Z, Y, X) and its box:
    rays with any of ``n_samples`` evaluation samples (no jitter, the model's step and near/far) inside
    the mask. As in the official code, samples are not restricted to the model box here.
    """
    keep = []
    for o, d in zip(torch.split(rays_o, chunk), torch.split(rays_d, chunk)):
        if mask is None:
            keep.append(ray_aabb_hit(o, d, aabb))
        else:
            keep.append(rays_hit_mask(o, d, aabb, near, far, step_size, mask, mask_aabb, n_samples))
    if not keep:
        return torch.zeros(0, dtype=torch.bool, device=rays_o.device)
    return torch.cat(keep)


@torch.no_grad()
def compute_dense_alpha(
    density_fn: Callable[[Tensor], Tensor],
    aabb,
    grid_size: Sequence[int],
    step: float,
    mask_fn: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tensor:
    """Alpha (X, Y, Z) at the dense grid points of the box (official ``getDenseAlpha``).

    ``density_fn`` maps world points (P, 3) to densities (P,); points outside the current mask
    (``mask_fn`` (P, 3) -> bool, if given) get sigma 0 and are not evaluated, like the official
    ``compute_alpha``. Evaluated one x-slice at a time.
    """
    pts = dense_grid_points(aabb, grid_size)
    gx, gy, gz = (int(g) for g in grid_size)
    alpha = torch.zeros((gx, gy, gz), dtype=pts.dtype, device=pts.device)
    for i in range(gx):
        flat = pts[i].reshape(-1, 3)
        sigma = torch.zeros(flat.shape[0], dtype=flat.dtype, device=flat.device)
        if mask_fn is None:
            valid = torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device)
        else:
            valid = mask_fn(flat)
        if bool(valid.any()):
            sigma[valid] = density_fn(flat[valid])
        alpha[i] = alpha_from_sigma(sigma, step).view(gy, gz)
    return alpha
