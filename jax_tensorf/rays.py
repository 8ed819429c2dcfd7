"""Camera rays of a split made on the device, equal bit for bit to ``SplitData.rays``.

A split's rays are addressed by flat pixel index (``view * H * W + row * W + col``, as in
:mod:`tensorf_common.data`). Ray filters run over millions of them; making them on the host and
copying them over cost seconds. Here the device gets the cameras (``(V, 3, 3)`` rotations and
``(V, 3)`` centres) and the per-column and per-row camera-frame direction components (computed on
the host exactly as ``SplitData.rays`` computes them), and forms each ray with numpy's float32
operations in numpy's order (:mod:`jax_tensorf.ieee`), so that a filter on these rays decides what
the same filter decides on the host's.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from . import ieee


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Cameras:
    """The cameras of a split on the device (see :func:`cameras`)."""

    rot: jax.Array
    """``(V, 3, 3)`` float32 camera-to-world rotations (OpenCV)."""
    origin: jax.Array
    """``(V, 3)`` float32 camera centres."""
    dir_x: jax.Array
    """``(W,)`` float32: ``(col + 0.5 - cx) / focal``."""
    dir_y: jax.Array
    """``(H,)`` float32: ``(row + 0.5 - cy) / focal``."""
    nz: jax.Array
    """``ieee.neg_zero()``, carried as an argument of the compiled functions that take these."""
    width: int = dataclasses.field(metadata=dict(static=True))
    height: int = dataclasses.field(metadata=dict(static=True))


def cameras(split) -> Cameras:
    """The :class:`Cameras` of a :class:`tensorf_common.data.SplitData` (flat indices must fit int32)."""
    if split.n_rays >= 2**31:
        raise ValueError(f"{split.name}: {split.n_rays} rays do not fit int32 flat indices")
    f = np.float32(split.focal)
    # the same float32 operations as SplitData.rays, per column and per row
    dir_x = (np.arange(split.width).astype(np.float32) + np.float32(0.5) - np.float32(split.cx)) / f
    dir_y = (np.arange(split.height).astype(np.float32) + np.float32(0.5) - np.float32(split.cy)) / f
    c2w = np.asarray(split.c2w, np.float32)
    return Cameras(
        jnp.asarray(np.ascontiguousarray(c2w[:, :3, :3])),
        jnp.asarray(np.ascontiguousarray(c2w[:, :3, 3])),
        jnp.asarray(dir_x),
        jnp.asarray(dir_y),
        jnp.asarray(ieee.neg_zero()),
        int(split.width),
        int(split.height),
    )


def rays_at(cams: Cameras, flat_idx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rays of flat pixel indices (int32, in range): ``(origins (R, 3), unit dirs (R, 3))`` float32,
    bit for bit ``SplitData.rays``. Traced inside ``ieee.x64()`` (see :mod:`jax_tensorf.ieee`)."""
    idx = flat_idx.astype(jnp.int32)
    n_pix = cams.width * cams.height
    view = idx // n_pix
    pix = idx - view * n_pix
    row = pix // cams.width
    col = pix - row * cams.width
    return cams.origin[view], _world_dirs(cams.rot[view], cams.dir_x[col], cams.dir_y[row], cams.nz)


def view_rays(cams: Cameras, views: jax.Array) -> tuple[jax.Array, jax.Array]:
    """All rays of the given views (int32, in range), in flat-index order: ``(origins (n, H, W, 3),
    unit dirs (n, H, W, 3))`` float32, bit for bit ``SplitData.rays`` of their pixels (not
    ``SplitData.view_rays``, whose matmul rounds differently), without a gather per ray. Traced
    inside ``ieee.x64()``."""
    rot = cams.rot[views][:, None, None]  # (n, 1, 1, 3, 3)
    d = _world_dirs(rot, cams.dir_x[None, None, :], cams.dir_y[None, :, None], cams.nz)
    return jnp.broadcast_to(cams.origin[views][:, None, None], d.shape), d


def _world_dirs(rot: jax.Array, dx: jax.Array, dy: jax.Array, nz: jax.Array) -> jax.Array:
    """Unit world directions ``normalize(rot @ (dx, dy, 1))`` (rot ``(..., 3, 3)``, dx and dy
    broadcasting to its batch shape) with numpy's float32 operations in numpy's order."""
    shape = jnp.broadcast_shapes(rot.shape[:-2], jnp.shape(dx), jnp.shape(dy))
    rot = jnp.broadcast_to(rot, shape + (3, 3))
    dx, dy = jnp.broadcast_to(dx, shape), jnp.broadcast_to(dy, shape)
    # numpy's einsum over j of rot[i, j] * (dx, dy, 1)[j]: (p0 + p1) + rot[i, 2], each rounded
    v = [
        (ieee.product(rot[..., i, 0], dx, nz) + ieee.product(rot[..., i, 1], dy, nz)) + rot[..., i, 2]
        for i in range(3)
    ]
    # numpy's norm: sqrt((v0^2 + v1^2) + v2^2), then a division per component
    sq = [ieee.product(c, c, nz) for c in v]
    norm = ieee.sqrt((sq[0] + sq[1]) + sq[2], nz)
    return jnp.stack([ieee.divide(c, norm, nz) for c in v], axis=-1)
