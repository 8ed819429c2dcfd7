"""Grid and step geometry shared by both frameworks (numpy only): the axis modes of the planes and
lines, their sizes, the grid size of a voxel count, the step and sample count.

These follow the official code's float32 arithmetic (``N_to_reso``, ``update_stepSize``,
``cal_n_samples``) so that both implementations derive the same grid sizes and sample counts.
"""

from __future__ import annotations

import numpy as np

BLENDER_AABB = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))
"""Default box of Blender (NeRF-Synthetic) scenes."""
BLENDER_NEAR_FAR = (2.0, 6.0)
"""Default near/far of Blender scenes."""

MAT_MODE = ((0, 1), (0, 2), (1, 2))
"""Plane k spans axes MAT_MODE[k] = (width axis, height axis) (official ``matMode``)."""
VEC_MODE = (2, 1, 0)
"""Line k runs along axis VEC_MODE[k] (official ``vecMode``)."""


def as_aabb(aabb) -> np.ndarray:
    """A (2, 3) float32 array from any (2, 3) or (6,) sequence; min must be below max."""
    a = np.asarray(aabb, dtype=np.float32).reshape(2, 3)
    if not np.all(a[0] < a[1]):
        raise ValueError(f"aabb: min {a[0].tolist()} must be below max {a[1].tolist()} on every axis")
    return a


def plane_size(grid_size, k: int) -> tuple[int, int]:
    """``(height, width)`` of VM plane k of a grid ``[X, Y, Z]``: ``(grid_size[MAT_MODE[k][1]],
    grid_size[MAT_MODE[k][0]])``; each framework adds its channel axis."""
    a, b = MAT_MODE[k]
    return int(grid_size[b]), int(grid_size[a])


def line_size(grid_size, k: int) -> int:
    """Length of line k of a grid ``[X, Y, Z]``: ``grid_size[VEC_MODE[k]]``."""
    return int(grid_size[VEC_MODE[k]])


def n_to_reso(n_voxels: int, aabb) -> list[int]:
    """Per-axis grid size [X, Y, Z] holding about ``n_voxels`` cubic voxels in the box (``N_to_reso``)."""
    a = as_aabb(aabb)
    size = a[1] - a[0]
    voxel = np.float32((np.prod(size, dtype=np.float32) / np.float32(n_voxels)) ** np.float32(1.0 / 3.0))
    return [int(v) for v in (size / voxel).astype(np.float32)]


def step_size_and_n_samples(aabb, grid_size, step_ratio: float) -> tuple[float, int]:
    """Sample spacing (``step_ratio`` times the mean voxel size) and the samples needed to cross
    the box diagonal (``update_stepSize``)."""
    a = as_aabb(aabb)
    size = a[1] - a[0]
    units = size / (np.asarray(grid_size, dtype=np.float32) - np.float32(1))
    step = np.float32(np.mean(units, dtype=np.float32) * np.float32(step_ratio))
    diag = np.float32(np.sqrt(np.sum(np.square(size), dtype=np.float32)))
    return float(step), int(diag / step) + 1


def train_n_samples(grid_size, step_ratio: float, max_samples: int = 1_000_000) -> int:
    """Samples per ray during training (official ``min(nSamples, cal_n_samples(reso, step_ratio))``)."""
    return int(min(max_samples, int(np.linalg.norm(np.asarray(grid_size, dtype=np.float64)) / step_ratio)))


def voxel_units(aabb, grid_size) -> np.ndarray:
    """Voxel edge per axis, ``aabbSize / (gridSize - 1)``."""
    a = as_aabb(aabb)
    return (a[1] - a[0]) / (np.asarray(grid_size, dtype=np.float32) - np.float32(1))
