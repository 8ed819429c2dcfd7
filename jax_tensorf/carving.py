"""Space carving of the visual hull on the device: ``tensorf_common.bounds.carve_visual_hull``
(same contract, same conservative guarantee, same result, voxel for voxel).

One compiled program carves with every view in turn, as the numpy version does: per view, the
smallest depth of a live voxel in front of the camera sets the silhouette's dilation radius, the
silhouette is dilated by that (traced) radius, exactly as scipy's square maximum filter does
(:func:`_dilate`), and the live voxels that project inside the image onto an empty dilated pixel
are dropped. Live voxels are rows of a buffer processed ``chunk`` at a time (from the device's
free memory); the buffer is compacted as voxels die, so that after the first views mostly the
hull's neighbourhood is projected. Projections use numpy's float32 operations in numpy's order
(:mod:`jax_tensorf.ieee`), so every voxel lands on the pixel numpy puts it on, and the radius
comes from the same float64 formula (``bounds.dilation_radius``).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from tensorf_common.bounds import camera_projection, carve_plan, finish_hull, grid_axes

from . import ieee
from .xla import fixed_chunk, fusion_barrier

CARVE_BYTES_PER_VOXEL = 256
"""Device bytes per voxel of a chunk (coordinates, products, float64 division operands, pixels)."""


def carve_visual_hull(
    split,
    aabb,
    resolution: Union[int, Sequence[int]] = 128,
    alpha_thres: float = 0.05,
    margin: int = 1,
    views: Optional[Sequence[int]] = None,
    *,
    chunk: Optional[int] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``tensorf_common.bounds.carve_visual_hull`` on the default device: ``(occupancy (X, Y, Z)
    bool, tight_aabb (2, 3) float32)``, equal to it. ``chunk``: voxels per step (default: from the
    device's free memory). Raises ``DatasetError`` as it does when no voxel survives."""
    plan = carve_plan(split, aabb, resolution, alpha_thres, views)
    if plan.trivial:
        return np.ones(plan.res, dtype=bool), plan.box.copy()
    n_vox = int(np.prod(plan.res))
    if n_vox > 1 << 24:
        raise ValueError(f"resolution: {plan.res} has more than 2^24 voxels (the device carving's limit)")
    chunk = fixed_chunk(n_vox, CARVE_BYTES_PER_VOXEL, chunk)
    proj = [camera_projection(split.c2w[v]) for v in plan.view_ids]
    A = np.stack([a for a, _ in proj])
    b = np.stack([b_ for _, b_ in proj])
    with ieee.x64():
        ids, count = _carve(
            tuple(jnp.asarray(a) for a in grid_axes(plan.box, plan.res)),
            jnp.asarray(A),
            jnp.asarray(b),
            jnp.asarray(split.images[plan.view_ids, ..., 3]),
            np.float32(split.focal),
            np.float32(split.cx),
            np.float32(split.cy),
            ieee.neg_zero(),
            np.float64(plan.radius_scale),
            np.float64(plan.voxel_radius),
            res=plan.res,
            chunk=chunk,
            thres_u8=plan.thres_u8,
        )
        alive = np.asarray(ids)[: int(count)]
    return finish_hull(split.name, alive[alive >= 0], plan, margin)


def _project(pts, A, b, focal, cx, cy, nz, want_pixels: bool):
    """Camera depth (and pixel coordinates) of voxel centres ``pts`` (3 rows), with ``_carve``'s
    numpy operations: ``((x A[r, 0] + y A[r, 1]) + z A[r, 2]) + b[r]``, ``f / z``,
    ``num * inv_z + c``."""

    def row(r):
        p = [ieee.product(pts[c], A[r, c], nz) for c in range(3)]
        return ((p[0] + p[1]) + p[2]) + b[r]

    z = row(2)
    front = z > 1e-6
    if not want_pixels:
        return z, front, None, None
    inv_z = ieee.divide(focal, jnp.where(front, z, jnp.float32(1.0)), nz)
    return z, front, ieee.product(row(0), inv_z, nz) + cx, ieee.product(row(1), inv_z, nz) + cy


def _dilate(sil, radius):
    """Square dilation of a binary image by a traced radius (scipy ``maximum_filter`` of size
    ``2 radius + 1``, zero padding), one axis after the other, by growing shifts: OR-ing a
    dilation by ``a`` with its copies shifted by ``+-s`` (``s <= 2a + 1``, so no gap opens) is the
    dilation by ``a + s``; ``s = min(2a + 1, radius - a)`` reaches ``radius`` in a few steps."""
    for axis in (0, 1):
        n = sil.shape[axis]
        r = jnp.minimum(radius, n)  # a wider window spans the whole axis anyway
        steps, reach = 0, 0
        while reach < n:
            steps, reach = steps + 1, 3 * reach + 1
        pad = [(0, 0), (0, 0)]
        pad[axis] = (n, n)

        def grow(_, st, axis=axis, n=n, r=r, pad=pad):
            x, a = st
            s = jnp.minimum(2 * a + 1, r - a)
            xp = jnp.pad(x, pad)
            x = x | jax.lax.dynamic_slice_in_dim(xp, n - s, n, axis) | jax.lax.dynamic_slice_in_dim(xp, n + s, n, axis)
            return x, a + s

        sil, _ = jax.lax.fori_loop(0, steps, grow, (sil, jnp.int32(0)))
    return sil


def _prefix_count(x):
    """Inclusive prefix sum of a 1-D float32 array of small integers (0/1 flags) whose length is a
    power of two: within blocks of 128 by a product with a triangular matrix, then the block
    totals the same way. Exact below 2^24. (XLA's CPU backend spends over a second compiling a
    16k-entry ``associative_scan`` prefix sum, and runs it slower than this.)"""
    n = x.shape[0]
    block = min(n, 128)
    tri = jnp.asarray(np.triu(np.ones((block, block), np.float32)))
    within = jnp.dot(x.reshape(-1, block), tri, precision=jax.lax.Precision.HIGHEST)
    if n > block:
        totals = within[:, -1]
        within = within + (_prefix_count(totals) - totals)[:, None]
    return within.reshape(-1)


@functools.partial(jax.jit, static_argnames=("res", "chunk", "thres_u8"))
def _carve(axes, A, b, alpha, focal, cx, cy, nz, radius_scale, voxel_radius, *, res, chunk, thres_u8):
    """Flat indices of the voxels that survive every view (-1 for dead rows) in the first
    ``count`` rows of a buffer, and ``count``.

    Live voxels are rows ``(x, y, z, index)`` of a float32 buffer (indices below 2^24 are exact
    there), so that a chunk is one contiguous slice and no voxel is unravelled twice. A view drops
    voxels by marking their index -1, and compacts the buffer (live rows moved to the front) only
    when that left fewer than half its rows alive: the work stays within twice the live voxels'
    while most compactions are spared (a prefix sum and a scatter cost more than a projection on
    XLA's CPU backend). The depth of the next view's nearest live voxel, which sets its dilation
    radius, is taken while a view carves."""
    X, Y, Z = res
    n_vox = X * Y * Z
    n_pad = -(-n_vox // chunk) * chunk
    n_views, H, W = alpha.shape
    lane = jnp.arange(chunk, dtype=jnp.int32)

    def n_chunks(count):
        return (count + (chunk - 1)) // chunk

    def take(live, c, count, updating=True):
        rows = jax.lax.dynamic_slice_in_dim(live, c * chunk, chunk, axis=0)
        if updating:
            # read into a buffer of its own: a loop that updates `live` in place while a fusion
            # still reads from it makes XLA copy the whole buffer every iteration
            rows = fusion_barrier(rows)
        return rows, ((c * chunk + lane) < count) & (rows[:, 3] >= 0)

    def nearest_in_front(pts, k, alive):
        z, front, _, _ = _project(pts, A[k], b[k], focal, cx, cy, nz, want_pixels=False)
        return jnp.min(jnp.where(alive & front, z, jnp.inf))

    def view(k, state):
        live, count, zmin = state
        # bounds.dilation_radius, in float64 as there
        radius = jnp.ceil(radius_scale / jnp.maximum(zmin.astype(jnp.float64) - voxel_radius, 1e-3)) + 1
        radius = jnp.minimum(radius, np.float64(max(H, W))).astype(jnp.int32)
        dilated = _dilate(alpha[k] >= thres_u8, radius).reshape(-1)
        k_next = jnp.minimum(k + 1, n_views - 1)

        def carve(c, st):
            out, n_alive, zmin_next = st
            rows, valid = take(out, c, count)
            pts = rows[:, :3].T
            _, front, u, w = _project(pts, A[k], b[k], focal, cx, cy, nz, want_pixels=True)
            inside = front & (u >= 0) & (u < W) & (w >= 0) & (w < H)
            pix = jnp.where(inside, w.astype(jnp.int32) * W + u.astype(jnp.int32), 0)
            keep = valid & (~inside | dilated[pix])
            zmin_next = jnp.minimum(zmin_next, nearest_in_front(pts, k_next, keep))
            ids = jnp.where(keep, rows[:, 3], -1.0)[:, None]
            out = jax.lax.dynamic_update_slice(out, ids, (c * chunk, jnp.int32(3)))
            return out, n_alive + jnp.sum(keep, dtype=jnp.int32), zmin_next

        live, n_alive, zmin = jax.lax.fori_loop(
            jnp.int32(0), n_chunks(count), carve, (live, jnp.int32(0), jnp.float32(jnp.inf))
        )

        def compact(c, st):
            # live rows to the front; writes stay below the chunk being read
            out, kept = st
            rows, keep = take(out, c, count)
            pos = kept + _prefix_count(keep.astype(jnp.float32)).astype(jnp.int32) - 1
            out = out.at[jnp.where(keep, pos, n_pad)].set(rows, mode="drop")
            return out, kept + jnp.sum(keep, dtype=jnp.int32)

        # only when at least half the rows are dead (no iteration otherwise)
        n_compact = jnp.where(2 * n_alive < count, n_chunks(count), 0)
        live, kept = jax.lax.fori_loop(jnp.int32(0), n_compact, compact, (live, jnp.int32(0)))
        return live, jnp.where(n_compact > 0, kept, count), zmin

    ids = jnp.arange(n_pad, dtype=jnp.int32)
    ix, rest = ids // (Y * Z), ids % (Y * Z)
    iy, iz = rest // Z, rest % Z
    live = jnp.stack([axes[0][jnp.minimum(ix, X - 1)], axes[1][iy], axes[2][iz], ids.astype(jnp.float32)], axis=1)

    def first_view(c, zmin):
        rows, valid = take(live, c, n_vox, updating=False)
        return jnp.minimum(zmin, nearest_in_front(rows[:, :3].T, 0, valid))

    zmin = jax.lax.fori_loop(jnp.int32(0), jnp.int32(n_pad // chunk), first_view, jnp.float32(jnp.inf))
    live, count, _ = jax.lax.fori_loop(0, n_views, view, (live, jnp.int32(n_vox), zmin))
    return live[:, 3].astype(jnp.int32), count
