"""Alpha mask: a binary occupancy volume that skips empty space, the box shrink it drives, and
ray filtering (official ``AlphaGridMask``, ``updateAlphaMask``, ``shrink``, ``filtering_rays``).

The mask volume is stored as the official one, ``(Z, Y, X)``, and queried like
``grid_sample(mask, xyz, align_corners=True) > 0`` (trilinear, zero padding): a point is inside
when any of its eight neighbouring voxels with a non-zero interpolation weight is set.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .sampling import normalize_coord


def dense_grid_points(aabb, grid_size: Sequence[int]) -> jax.Array:
    """The voxel corners of the box, ``(X, Y, Z, 3)`` (official ``getDenseAlpha`` grid)."""
    aabb = jnp.asarray(aabb, jnp.float32)
    axes = [jnp.linspace(0.0, 1.0, int(n), dtype=jnp.float32) for n in grid_size]
    s = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)
    return aabb[0] * (1.0 - s) + aabb[1] * s


def alpha_from_sigma(sigma: jax.Array, step) -> jax.Array:
    """``1 - exp(-sigma * step)``: no distance_scale here (official)."""
    return 1.0 - jnp.exp(-sigma * step)


def mask_corner_codes(mask: jax.Array) -> jax.Array:
    """Per cell of the mask lattice, its 8 corners as the bits of a uint8: ``(Z+1, Y+1, X+1)``.

    Cell ``c`` (per axis ``c = floor(position) + 1``, so cells -1..size-1 of the lattice become
    0..size) holds corner ``(dz, dy, dx)`` in bit ``4 dz + 2 dy + dx``; corners outside the volume
    are 0 (zero padding)."""
    p = jnp.pad(mask.astype(jnp.uint8), ((1, 1), (1, 1), (1, 1)))
    Z, Y, X = mask.shape
    code = jnp.zeros((Z + 1, Y + 1, X + 1), jnp.uint8)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                corner = p[dz : dz + Z + 1, dy : dy + Y + 1, dx : dx + X + 1]
                code = code | (corner << (4 * dz + 2 * dy + dx))
    return code


# bits of the corners with d = 0 on one axis (the only corners whose weight is non-zero when the
# point sits exactly on a lattice plane of that axis)
_D0_X, _D0_Y, _D0_Z = 0x55, 0x33, 0x0F


def query_alpha_mask(mask: jax.Array, mask_aabb: jax.Array, xyz: jax.Array, size=None) -> jax.Array:
    """Whether world points (..., 3) fall in the mask (Z, Y, X): ``grid_sample(mask) > 0``.

    The trilinear value is positive exactly when some set corner has a positive weight; a corner
    on the far side of an axis has weight ``frac`` (zero only on a lattice plane) and one on the
    near side ``1 - frac`` (never zero). So one gather of the cell's 8 corner bits
    (:func:`mask_corner_codes`), masked by the corners whose weight is positive, answers it exactly
    (8 gathers of the float volume before). ``size``: the active [X, Y, Z] of a mask stored in a
    larger all-False-padded buffer (a traced (3,) int array); None: the array is the mask."""
    lin, frac, inside = _lattice_cell(mask.shape, mask_aabb, xyz, size)
    code = mask_corner_codes(mask).reshape(-1)[lin]
    return inside & ((code & _weighted_corners(frac)) != 0)


def _lattice_cell(shape: Sequence[int], mask_aabb: jax.Array, xyz: jax.Array, size=None):
    """``(lin, frac, inside)`` of world points in the lattice of a ``(Z, Y, X)`` mask: the flat
    index of their cell in :func:`mask_corner_codes`, the fractional position per axis (x, y, z)
    and whether the cell exists. ``size``: the active [X, Y, Z] inside a buffer of ``shape``."""
    Zb, Yb, Xb = (int(n) for n in shape)
    X, Y, Z = (Xb, Yb, Zb) if size is None else (size[0], size[1], size[2])
    n = normalize_coord(xyz, mask_aabb)
    sizes = (X, Y, Z)
    pos = [(n[..., d] + 1.0) * 0.5 * (sizes[d] - 1) for d in range(3)]
    lo = [jnp.floor(p) for p in pos]
    frac = [p - l for p, l in zip(pos, lo)]
    cell = [l.astype(jnp.int32) + 1 for l in lo]
    inside = (cell[0] >= 0) & (cell[0] <= X) & (cell[1] >= 0) & (cell[1] <= Y) & (cell[2] >= 0) & (cell[2] <= Z)
    # cells up to the active size: their far corners lie in the padding, which is False
    lin = (jnp.clip(cell[2], 0, Z) * (Yb + 1) + jnp.clip(cell[1], 0, Y)) * (Xb + 1) + jnp.clip(cell[0], 0, X)
    return lin, frac, inside


def _weighted_corners(frac) -> jax.Array:
    """The corner bits whose trilinear weight is positive, given the fractional positions (x, y, z)."""
    bits = jnp.where(frac[0] > 0, 0xFF, _D0_X).astype(jnp.uint8)
    bits = bits & jnp.where(frac[1] > 0, 0xFF, _D0_Y).astype(jnp.uint8)
    return bits & jnp.where(frac[2] > 0, 0xFF, _D0_Z).astype(jnp.uint8)


def mask_cell_keys(shape: Sequence[int], mask_aabb: jax.Array, xyz: jax.Array, size=None) -> jax.Array:
    """:func:`query_alpha_mask` up to its gather, one int32 per world point (..., 3) of a
    ``(Z, Y, X)`` mask: ``8 * cell + planes``, with ``cell`` the point's flat index in
    :func:`mask_corner_codes` (one past the last cell outside the lattice) and bit k of ``planes``
    set when the point lies on a lattice plane of axis k (x, y, z), where the far corners weigh
    nothing. :func:`mask_key_hits` finishes the query. Apart so that a caller can keep this
    arithmetic out of the gather's fusion (XLA's CPU backend vectorises it then). ``size`` as in
    :func:`query_alpha_mask`."""
    Z, Y, X = (int(n) for n in shape)
    n_cells = (Z + 1) * (Y + 1) * (X + 1)
    if n_cells >= 1 << 28:
        raise ValueError(f"mask_cell_keys: a {Z}x{Y}x{X} mask has too many cells for int32 keys")
    lin, frac, inside = _lattice_cell(shape, mask_aabb, xyz, size)
    planes = sum(((f <= 0).astype(jnp.int32) << k) for k, f in enumerate(frac))
    return jnp.where(inside, lin, n_cells) * 8 + planes


def mask_key_codes(mask: jax.Array) -> jax.Array:
    """:func:`mask_corner_codes` flattened, with one empty cell appended (the cell of the keys of
    points outside the lattice)."""
    return jnp.concatenate([mask_corner_codes(mask).reshape(-1), jnp.zeros((1,), jnp.uint8)])


# corners with weight > 0 per plane bits (bit k: on a plane of axis k): the corners whose bit-index
# (4 dz + 2 dy + dx) shares no set bit with the plane bits
_CORNERS_OFF_PLANES = np.array(
    [sum(1 << c for c in range(8) if c & p == 0) for p in range(8)], dtype=np.uint8
)


def mask_key_hits(key_codes: jax.Array, keys: jax.Array) -> jax.Array:
    """Whether the points of :func:`mask_cell_keys` fall in the mask (``key_codes`` from
    :func:`mask_key_codes`): equal to :func:`query_alpha_mask` of the same points."""
    corners = jnp.asarray(_CORNERS_OFF_PLANES)[keys & 7]
    return (key_codes[keys >> 3] & corners) != 0


def dilate_and_threshold(alpha_xyz: jax.Array, thres: float) -> jax.Array:
    """(X, Y, Z) alpha -> (Z, Y, X) bool: clamp to [0, 1], 3x3x3 max-pool (stride 1), ``>= thres``."""
    a = jnp.clip(jnp.transpose(alpha_xyz, (2, 1, 0)), 0.0, 1.0)
    pooled = jax.lax.reduce_window(
        a, -jnp.inf, jax.lax.max, (3, 3, 3), (1, 1, 1), ((1, 1), (1, 1), (1, 1))
    )
    return pooled >= thres


def build_alpha_mask(alpha_xyz, aabb, thres: float):
    """Official ``updateAlphaMask`` after the alpha grid is computed.

    Returns ``(mask (Z, Y, X) bool, new_aabb (2, 3) or None)``: the box of the kept voxel corners,
    or None when no voxel is kept (the official code crashes there; here the caller keeps the old
    box and the mask is all empty).
    """
    mask = dilate_and_threshold(jnp.asarray(alpha_xyz), thres)
    return mask, mask_bounds(mask, aabb)


def mask_bounds(mask, aabb) -> Optional[np.ndarray]:
    """Box of the set voxel corners of a (Z, Y, X) mask over ``aabb``; None when the mask is empty."""
    m = np.asarray(mask)
    if not m.any():
        return None
    aabb = np.asarray(aabb, np.float32)
    Z, Y, X = m.shape
    zs, ys, xs = np.nonzero(m)
    idx_min = np.array([xs.min(), ys.min(), zs.min()], np.float32)
    idx_max = np.array([xs.max(), ys.max(), zs.max()], np.float32)
    sizes = np.array([X, Y, Z], np.float32)
    # linspace(0, 1, n)[i] in float32, as the official dense grid
    s_min = idx_min / (sizes - 1)
    s_max = idx_max / (sizes - 1)
    lo = aabb[0] * (1 - s_min) + aabb[1] * s_min
    hi = aabb[0] * (1 - s_max) + aabb[1] * s_max
    return np.stack([lo, hi]).astype(np.float32)


def shrink_box(aabb, grid_size: Sequence[int], new_aabb, mask_grid_size: Sequence[int]):
    """Official ``shrink`` arithmetic. Returns ``(t_l, b_r, aabb_after, grid_after)``: voxel index
    ranges [t_l, b_r) per axis, the box snapped to grid points when the mask resolution differs
    from the grid's, and the new per-axis grid size."""
    aabb = np.asarray(aabb, np.float32)
    new_aabb = np.asarray(new_aabb, np.float32)
    gs = np.asarray(grid_size, np.int64)
    units = (aabb[1] - aabb[0]) / (gs.astype(np.float32) - np.float32(1))
    t_l = np.round((new_aabb[0] - aabb[0]) / units).astype(np.int64)
    b_r = np.round((new_aabb[1] - aabb[0]) / units).astype(np.int64) + 1
    b_r = np.minimum(b_r, gs)
    t_l = np.maximum(t_l, 0)
    if not np.array_equal(np.asarray(mask_grid_size, np.int64), gs):
        t_l_r = t_l.astype(np.float32) / (gs - 1).astype(np.float32)
        b_r_r = (b_r - 1).astype(np.float32) / (gs - 1).astype(np.float32)
        new_aabb = np.stack(
            [(1 - t_l_r) * aabb[0] + t_l_r * aabb[1], (1 - b_r_r) * aabb[0] + b_r_r * aabb[1]]
        ).astype(np.float32)
    return t_l.tolist(), b_r.tolist(), new_aabb, (b_r - t_l).tolist()


def compute_dense_alpha(
    density_fn: Callable[[jax.Array], jax.Array],
    aabb,
    grid_size: Sequence[int],
    step: float,
    mask_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
    chunk_points: int = 1 << 18,
) -> jax.Array:
    """Alpha on the dense grid, ``(X, Y, Z)``, computed one x-slab at a time (official
    ``getDenseAlpha``; points outside the current mask get alpha 0)."""
    pts = dense_grid_points(aabb, grid_size)
    X = int(grid_size[0])
    slab = int(grid_size[1]) * int(grid_size[2])
    per = max(1, chunk_points // slab)

    @jax.jit
    def alpha_of(p):
        flat = p.reshape(-1, 3)
        sigma = density_fn(flat)
        if mask_fn is not None:
            sigma = jnp.where(mask_fn(flat), sigma, 0.0)
        return alpha_from_sigma(sigma, step).reshape(p.shape[:-1])

    out = []
    for i in range(0, X, per):
        block = pts[i : i + per]
        if block.shape[0] < per:  # pad the last block so that one compilation serves all
            pad = per - block.shape[0]
            block = jnp.concatenate([block, jnp.broadcast_to(block[-1:], (pad,) + block.shape[1:])])
            out.append(alpha_of(block)[: per - pad])
        else:
            out.append(alpha_of(block))
    return jnp.concatenate(out, axis=0)


def full_mask(aabb) -> tuple[jax.Array, jax.Array]:
    """An all-set 2x2x2 mask over ``aabb``: equivalent to having no mask (every point inside the
    box passes), with a fixed shape so that code paths stay the same."""
    return jnp.ones((2, 2, 2), dtype=bool), jnp.asarray(aabb, jnp.float32)


def rays_hit_mask(
    rays_o: jax.Array,
    rays_d: jax.Array,
    aabb: jax.Array,
    near: float,
    far: float,
    step,
    mask: jax.Array,
    mask_aabb: jax.Array,
    n_samples: int = 256,
    mask_size=None,
) -> jax.Array:
    """Whether any of ``n_samples`` evaluation samples of each ray falls in the mask (official
    ``filtering_rays``, the mask branch); ``mask_size`` as in :func:`query_alpha_mask`."""
    from .sampling import sample_ray

    _, xyz, _ = sample_ray(rays_o, rays_d, aabb, near, far, step, n_samples, None)
    return jnp.any(query_alpha_mask(mask, mask_aabb, xyz, mask_size), axis=-1)
