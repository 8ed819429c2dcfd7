"""Grids in fixed buffers: the operations of static-shape training (``TrainConfig.static_shapes``).

The planes, lines and alpha mask are allocated once, at the largest size the run can reach, and
the active size is a traced value (``FieldState.grid_size``, ``FieldState.mask_size``). Everything
past the active size is zero (False for the mask), and the lookups treat it as outside the grid.
So the train step, the upsample, the shrink and the alpha-mask update each compile once per run,
whatever the schedule does to the grid. Every operation here equals its exact-size twin
(:func:`jax_tensorf.fields.upsample_vm`, :func:`~jax_tensorf.fields.shrink_vm`, and in
:mod:`jax_tensorf.model` :func:`~jax_tensorf.model.buffered_alpha_mask` for
:func:`jax_tensorf.alpha_mask.compute_dense_alpha` + :func:`~jax_tensorf.alpha_mask.build_alpha_mask`)
on the active part: bit for bit, except that the compiled upsample may round its interpolation one
unit in the last place differently (fused multiply-adds).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tensorf_common.config import TrainConfig
from tensorf_common.geometry import line_size, n_to_reso, plane_size

from . import fields

HEADROOM = 1.25
"""Buffers hold this much more than the largest grid the schedule reaches on the initial box per
axis: a shrink that cuts one axis to half its length makes the other axes of the same voxel count
about 1.26 times longer (a larger shrink re-allocates, and the step compiles again)."""


def buffer_size(tc: TrainConfig, aabb, at_least: Sequence[int] = (2, 2, 2)) -> list[int]:
    """Per-axis buffer size [X, Y, Z] for a run starting on box ``aabb``."""
    counts = [tc.n_voxel_init] + list(tc.voxel_schedule())
    largest = np.max([n_to_reso(n, aabb) for n in counts], axis=0)
    return [max(int(math.ceil(HEADROOM * g)), int(a)) for g, a in zip(largest, at_least)]


def fits(size: Sequence[int], buf: Sequence[int]) -> bool:
    return all(int(s) <= int(b) for s, b in zip(size, buf))


# ---------------------------------------------------------------------------------------------
# Padding and slicing (host side, at set-up, checkpoints and evaluation)
# ---------------------------------------------------------------------------------------------


def _map_grid(grid: dict, plane_fn, line_fn) -> dict:
    out = {"lines": [line_fn(l, k) for k, l in enumerate(grid["lines"])]}
    if "planes" in grid:
        out["planes"] = [plane_fn(p, k) for k, p in enumerate(grid["planes"])]
    return out


def pad_grid(grid: dict, buf: Sequence[int]) -> dict:
    """Zero-pad a VM or CP grid's planes and lines to the buffer size ``buf`` [X, Y, Z]."""

    def plane(p, k):
        H, W = plane_size(buf, k)
        return jnp.pad(p, ((0, H - p.shape[0]), (0, W - p.shape[1]), (0, 0)))

    def line(l, k):
        return jnp.pad(l, ((0, line_size(buf, k) - l.shape[0]), (0, 0)))

    return _map_grid(grid, plane, line)


def slice_grid(grid: dict, size: Sequence[int]) -> dict:
    """The active part [X, Y, Z] = ``size`` of a padded grid."""

    def plane(p, k):
        H, W = plane_size(size, k)
        return p[:H, :W]

    return _map_grid(grid, plane, lambda l, k: l[: line_size(size, k)])


def map_grids(params: dict, fn) -> dict:
    """Apply ``fn`` to the density and appearance grids of a parameter tree."""
    return {k: (fn(v) if k in ("density", "app") else v) for k, v in params.items()}


def pad_mask(mask, buf: Sequence[int]) -> jax.Array:
    """A (Z, Y, X) mask in an all-False buffer of [X, Y, Z] = ``buf``."""
    mask = jnp.asarray(mask, bool)
    Z, Y, X = mask.shape
    return jnp.pad(mask, ((0, int(buf[2]) - Z), (0, int(buf[1]) - Y), (0, int(buf[0]) - X)))


def as_size(size: Sequence[int]) -> jax.Array:
    return jnp.asarray(np.asarray(size, np.int32))


# ---------------------------------------------------------------------------------------------
# Upsample and shrink inside the buffers (compiled once per buffer shape)
# ---------------------------------------------------------------------------------------------


def _resize_axis(x: jax.Array, axis: int, old, new) -> jax.Array:
    """``fields._resize_axis_aligned`` with traced sizes: entries past ``new`` become zero."""
    n_buf = x.shape[axis]
    old_f, new_f = old.astype(jnp.float32), new.astype(jnp.float32)
    ratio = jnp.where((new > 1) & (old > 1), (old_f - 1.0) / jnp.maximum(new_f - 1.0, 1.0), 0.0)
    pos = jnp.arange(n_buf, dtype=jnp.float32) * ratio
    i0 = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, old - 1)
    i1 = jnp.minimum(i0 + 1, old - 1)
    shape = [1] * x.ndim
    shape[axis] = n_buf
    f = (pos - i0).reshape(shape).astype(x.dtype)
    out = jnp.take(x, i0, axis=axis) * (1 - f) + jnp.take(x, i1, axis=axis) * f
    return jnp.where((jnp.arange(n_buf) < new).reshape(shape), out, jnp.zeros_like(out))


def _crop_axis(x: jax.Array, axis: int, start, new) -> jax.Array:
    n_buf = x.shape[axis]
    shape = [1] * x.ndim
    shape[axis] = n_buf
    out = jnp.take(x, jnp.clip(jnp.arange(n_buf) + start, 0, n_buf - 1), axis=axis)
    return jnp.where((jnp.arange(n_buf) < new).reshape(shape), out, jnp.zeros_like(out))


def _per_axis(grid: dict, fn, first, second) -> dict:
    """Apply ``fn(x, axis, first[a], second[a])`` along each grid axis a of every plane and line."""

    def plane(p, k):
        a, b = fields.MAT_MODE[k]
        return fn(fn(p, 0, first[b], second[b]), 1, first[a], second[a])

    def line(l, k):
        v = fields.VEC_MODE[k]
        return fn(l, 0, first[v], second[v])

    return _map_grid(grid, plane, line)


@jax.jit
def resample_grid(grid: dict, old, new) -> dict:
    """Upsample (or downsample) a padded grid from active size ``old`` to ``new`` (traced (3,)
    ints), bilinear/linear with ``align_corners=True`` (official ``upsample_volume_grid``)."""
    return _per_axis(grid, _resize_axis, old, new)


@jax.jit
def crop_grid(grid: dict, start, new) -> dict:
    """Crop a padded grid to voxels ``[start, start + new)`` per axis (official ``shrink``), moved
    to the buffer's origin."""
    return _per_axis(grid, _crop_axis, start, new)


# ---------------------------------------------------------------------------------------------
# The alpha mask inside a buffer
# ---------------------------------------------------------------------------------------------


def mask_box(aabb, reso: Sequence[int], first, last) -> np.ndarray:
    """The box of the set voxel corners, from their first and last indices (the float32
    arithmetic of :func:`jax_tensorf.alpha_mask.mask_bounds`)."""
    aabb = np.asarray(aabb, np.float32)
    sizes = np.asarray(reso, np.float32)
    s_min = np.asarray(first, np.float32) / (sizes - 1)
    s_max = np.asarray(last, np.float32) / (sizes - 1)
    lo = aabb[0] * (1 - s_min) + aabb[1] * s_min
    hi = aabb[0] * (1 - s_max) + aabb[1] * s_max
    return np.stack([lo, hi]).astype(np.float32)


def mask_slab(mask_buf: Sequence[int], points: int = 1 << 18) -> int:
    """x-slab width of the buffered alpha-mask update for about ``points`` vertices per slab."""
    return max(1, min(int(mask_buf[0]), points // (int(mask_buf[1]) * int(mask_buf[2]))))


__all__ = [
    "HEADROOM",
    "as_size",
    "buffer_size",
    "crop_grid",
    "fits",
    "map_grids",
    "mask_box",
    "mask_slab",
    "pad_grid",
    "pad_mask",
    "resample_grid",
    "slice_grid",
]
