"""VM and CP tensor fields: initialisation, grid lookups, density activation, resize and shrink.

Layout (see DEVELOPERS.md): grids are channel-last. A VM grid is ``{"planes": [P0, P1, P2],
"lines": [L0, L1, L2]}`` with ``P_k`` of shape ``(H_k, W_k, C_k)`` and ``L_k`` of shape ``(L_k, C_k)``,
where ``W_k = gridSize[MAT_MODE[k][0]]``, ``H_k = gridSize[MAT_MODE[k][1]]`` and
``L_k = gridSize[VEC_MODE[k]]``. A CP grid is ``{"lines": [L0, L1, L2]}``.

Lookups reproduce ``torch.nn.functional.grid_sample(mode="bilinear", padding_mode="zeros",
align_corners=True)``: the coordinate u in [-1, 1] maps to the continuous index
``(u + 1) / 2 * (size - 1)`` and neighbours outside the array contribute zero.

The bilinear lookup is written once, for one point (:func:`_bilinear_point`, :func:`_linear_point`),
and vectorised in several selectable ways (``RenderConfig.vmap_variant``):

- ``flat``: the points are flattened and the point function is vmapped once (one batched gather per
  corner);
- ``pairs``: the three plane/line pairs are stacked (zero-padded to a common shape when the grid is
  not cubic) and an outer vmap runs over the pair axis;
- ``rays``: points shaped (R, N, 3); the inner vmap runs over rays, the outer over samples (the seed's
  "magic vmap", ``in_axes=-2`` innermost);
- ``samples``: points shaped (R, N, 3); the inner vmap runs over samples, the outer over rays;
- ``gather``: no vmap: the same corner arithmetic (:func:`_plane_corners`, :func:`_line_corners`)
  on whole arrays, the corner indices and weights materialised once per point, then one plain
  gather per corner. XLA's CPU backend otherwise recomputes the per-point index arithmetic for
  every channel inside each gather fusion; this is the fastest layout there.

Three more variants write the lookup as a weighted gather of table rows (a plane flattened to
``(H * W, C)``, a line ``(L, C)``; corner indices and weights from the same arithmetic) with a
backward of their own that accumulates the gradient in float32 whatever the compute dtype, each
corner's gradient one contiguous channel-last row (``LOOKUP_VARIANTS``):

- ``vjp``: a custom VJP whose backward is one XLA scatter-add (:mod:`jax_tensorf.lookup_vjp`);
- ``sorted``: the same with the corner rows sorted by index and summed by segments;
- ``pallas``: Pallas kernels for the gather and its atomic-add backward
  (:mod:`jax_tensorf.lookup_pallas`; Triton on a GPU, interpret mode elsewhere).

These take ``sizes``, the active grid size [X, Y, Z] (a traced (3,) int32 array) of grids stored
zero-padded in larger buffers: corners use the active extent, corners outside it weigh 0, and the
padding gets no gradient.

All variants compute the same numbers (tests check max-abs <= 1e-6).

Density can also be looked up through the recomposed grid (:func:`dense_density_feature`): the
per-vertex sum of the component products, interpolated trilinearly, which equals the factored
lookup up to rounding and costs 8 scalar gathers per point (``RenderConfig.density_lookup``).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tensorf_common.config import ConfigError

from tensorf_common.geometry import MAT_MODE, VEC_MODE, line_size, plane_size

from .appearance import dot_precision

LOOKUP_VARIANTS = ("vjp", "sorted", "pallas")
"""Variants that are weighted row gathers with a float32-accumulating backward of their own."""
VMAP_VARIANTS = ("flat", "pairs", "rays", "samples", "gather") + LOOKUP_VARIANTS


# ---------------------------------------------------------------------------------------------
# The lookup, written once for one point.
# ---------------------------------------------------------------------------------------------


def _plane_corners(h, w, u, v):
    """The four bilinear corners of (u, v) in an h x w plane: ``[(row, col, weight), ...]`` with rows
    and columns clipped into the plane and the weight of a corner outside it set to 0 (zero
    padding). Works on scalars (the point function) and on arrays (the ``gather`` variant)."""
    x = (u + 1.0) * 0.5 * (w - 1)
    y = (v + 1.0) * 0.5 * (h - 1)
    x0f = jnp.floor(x)
    y0f = jnp.floor(y)
    fx = x - x0f
    fy = y - y0f
    x0 = x0f.astype(jnp.int32)
    y0 = y0f.astype(jnp.int32)
    out = []
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi = x0 + dx
        yi = y0 + dy
        weight = (fx if dx else 1.0 - fx) * (fy if dy else 1.0 - fy)
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        out.append((jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1), jnp.where(inside, weight, 0.0)))
    return out


def _line_corners(length, t):
    """The two linear corners of t on a line: ``[(index, weight), ...]`` (clipped, 0 outside)."""
    x = (t + 1.0) * 0.5 * (length - 1)
    x0f = jnp.floor(x)
    fx = x - x0f
    x0 = x0f.astype(jnp.int32)
    out = []
    for dx in (0, 1):
        xi = x0 + dx
        inside = (xi >= 0) & (xi < length)
        out.append((jnp.clip(xi, 0, length - 1), jnp.where(inside, fx if dx else 1.0 - fx, 0.0)))
    return out


def _bilinear_point(plane: jax.Array, u: jax.Array, v: jax.Array, wh: jax.Array | None = None) -> jax.Array:
    """Bilinear lookup of one point in a channel-last plane (H, W, C); u indexes W, v indexes H.

    ``wh`` optionally gives the true (W, H) of a zero-padded plane (the ``pairs`` variant); the
    padding region is then treated as outside the array.
    """
    H, W = plane.shape[0], plane.shape[1]
    w_true = W if wh is None else wh[0]
    h_true = H if wh is None else wh[1]
    out = None
    for row, col, weight in _plane_corners(h_true, w_true, u, v):
        val = plane[jnp.minimum(row, H - 1), jnp.minimum(col, W - 1)]
        term = val * weight.astype(val.dtype)
        out = term if out is None else out + term
    return out


def _linear_point(line: jax.Array, t: jax.Array, length: jax.Array | None = None) -> jax.Array:
    """Linear lookup of one point in a channel-last line (L, C) (``grid_sample`` on (1,C,L,1) at x=0)."""
    L = line.shape[0]
    out = None
    for idx, weight in _line_corners(L if length is None else length, t):
        term = line[jnp.minimum(idx, L - 1)] * weight.astype(line.dtype)
        out = term if out is None else out + term
    return out


def grid_sample_2d(plane: jax.Array, uv: jax.Array) -> jax.Array:
    """``grid_sample`` of a channel-last plane (H, W, C) at points uv (P, 2) in [-1, 1] -> (P, C)."""
    return jax.vmap(_bilinear_point, in_axes=(None, 0, 0))(plane, uv[:, 0], uv[:, 1])


def grid_sample_1d(line: jax.Array, t: jax.Array) -> jax.Array:
    """``grid_sample`` of a channel-last line (L, C) at points t (P,) in [-1, 1] -> (P, C)."""
    return jax.vmap(_linear_point, in_axes=(None, 0))(line, t)


# ---------------------------------------------------------------------------------------------
# Per-pair products, vectorised in the selectable ways.
# ---------------------------------------------------------------------------------------------


def _plane_extent(sizes, k: int):
    """(W, H) of plane k inside a zero-padded buffer, or None (the buffer is the plane)."""
    if sizes is None:
        return None
    a, b = MAT_MODE[k]
    return (sizes[a], sizes[b])


def _line_extent(sizes, k: int):
    """Length of line k inside a zero-padded buffer, or None."""
    return None if sizes is None else sizes[VEC_MODE[k]]


def _pair_point(plane, line, xyz, k: int, out_dtype=None, sizes=None):
    """plane_k(xyz) * line_k(xyz) for one point -> (C_k,), the product in ``out_dtype``."""
    a, b = MAT_MODE[k]
    p = _bilinear_point(plane, xyz[a], xyz[b], _plane_extent(sizes, k))
    l = _linear_point(line, xyz[VEC_MODE[k]], _line_extent(sizes, k))
    if out_dtype is not None:
        p, l = p.astype(out_dtype), l.astype(out_dtype)
    return p * l


def _vectorise(fn: Callable, xyz: jax.Array, variant: str) -> jax.Array:
    """Apply a one-point function ``fn(xyz (3,)) -> (C,)`` to xyz (..., 3) with the given vmap layout."""
    if variant in ("flat", "pairs"):
        flat = xyz.reshape(-1, 3)
        return jax.vmap(fn)(flat).reshape(*xyz.shape[:-1], -1)
    if xyz.ndim != 3:
        raise ConfigError(
            f"render.vmap_variant: {variant!r} needs points shaped (rays, samples, 3), got {xyz.shape}; "
            "use 'flat' or 'pairs' with compacted samples"
        )
    if variant == "rays":  # inner vmap over rays (axis 0), outer over samples (axis 1)
        return jax.vmap(jax.vmap(fn), in_axes=1, out_axes=1)(xyz)
    if variant == "samples":  # inner vmap over samples (axis 1), outer over rays (axis 0)
        return jax.vmap(jax.vmap(fn))(xyz)
    raise ConfigError(f"render.vmap_variant: unknown {variant!r}; choose one of {VMAP_VARIANTS}")


def _gather_plane(plane: jax.Array, u: jax.Array, v: jax.Array, wh=None) -> jax.Array:
    """Batched bilinear lookup (the ``gather`` variant): (P,) coordinates -> (P, C). ``wh``: the
    active (W, H) of a zero-padded plane."""
    H, W, C = plane.shape
    corners = _plane_corners(H if wh is None else wh[1], W if wh is None else wh[0], u, v)
    idx = [row * W + col for row, col, _ in corners]  # clipped to the active extent <= the buffer
    wts = [weight for _, _, weight in corners]
    idx, wts = jax.lax.optimization_barrier((idx, wts))  # computed once per point, not per channel
    flat = plane.reshape(H * W, C)
    return sum(flat[i] * w[:, None].astype(flat.dtype) for i, w in zip(idx, wts))


def _gather_line(line: jax.Array, t: jax.Array, length=None) -> jax.Array:
    """Batched linear lookup (the ``gather`` variant): (P,) coordinates -> (P, C). ``length``: the
    active length of a zero-padded line."""
    L = line.shape[0]
    corners = _line_corners(L if length is None else length, t)
    idx, wts = jax.lax.optimization_barrier(([i for i, _ in corners], [w for _, w in corners]))
    return sum(line[i] * w[:, None].astype(line.dtype) for i, w in zip(idx, wts))


def _pair_gather(plane, line, xyz: jax.Array, k: int, out_dtype=None, sizes=None) -> jax.Array:
    flat = xyz.reshape(-1, 3)
    a, b = MAT_MODE[k]
    p = _gather_plane(plane, flat[:, a], flat[:, b], _plane_extent(sizes, k))
    l = _gather_line(line, flat[:, VEC_MODE[k]], _line_extent(sizes, k))
    if out_dtype is not None:
        p, l = p.astype(out_dtype), l.astype(out_dtype)
    return (p * l).reshape(*xyz.shape[:-1], -1)


def _stack_padded(arrays: Sequence[jax.Array]) -> jax.Array:
    """Zero-pad arrays to a common shape and stack them on a new leading axis."""
    shape = tuple(max(a.shape[d] for a in arrays) for d in range(arrays[0].ndim))
    padded = [jnp.pad(a, [(0, s - n) for s, n in zip(shape, a.shape)]) for a in arrays]
    return jnp.stack(padded)


def _pairs_features(planes, lines, xyz: jax.Array, out_dtype=None, sizes=None) -> list[jax.Array]:
    """The ``pairs`` variant: outer vmap over the three plane/line pairs (padded to one shape)."""
    # Reorder coordinates per pair so that one function serves all three: (u, v, t) per pair.
    perm = jnp.array([[MAT_MODE[k][0], MAT_MODE[k][1], VEC_MODE[k]] for k in range(3)])
    flat = xyz.reshape(-1, 3)
    uvt = flat[:, perm]  # (P, 3 pairs, 3)
    P = _stack_padded(planes)
    Lns = _stack_padded(lines)
    if sizes is None:
        wh = jnp.array([[p.shape[1], p.shape[0]] for p in planes], dtype=jnp.int32)
        ln = jnp.array([l.shape[0] for l in lines], dtype=jnp.int32)
    else:
        wh = jnp.stack([jnp.stack(_plane_extent(sizes, k)) for k in range(3)]).astype(jnp.int32)
        ln = jnp.stack([_line_extent(sizes, k) for k in range(3)]).astype(jnp.int32)

    def one_pair(plane, line, wh_k, l_k, uvt_k):
        def point(c):
            p = _bilinear_point(plane, c[0], c[1], wh_k)
            l = _linear_point(line, c[2], l_k)
            if out_dtype is not None:
                p, l = p.astype(out_dtype), l.astype(out_dtype)
            return p * l

        return jax.vmap(point)(uvt_k)

    out = jax.vmap(one_pair, in_axes=(0, 0, 0, 0, 1))(P, Lns, wh, ln, uvt)  # (3, P, Cmax)
    comps = [p.shape[-1] for p in planes]
    return [out[k, :, : comps[k]].reshape(*xyz.shape[:-1], comps[k]) for k in range(3)]


def vm_pair_features(
    planes, lines, xyz_n: jax.Array, variant: str = "flat", out_dtype=None, sizes=None
) -> list[jax.Array]:
    """Per-pair products ``plane_k(xyz) * line_k(xyz)``, a list of three (..., C_k) arrays.

    The lookups compute in the grids' dtype; ``out_dtype`` (default: that dtype) is the dtype of
    the products (mixed precision: bf16 lookups with float32 products, say). ``sizes``: the active
    grid size [X, Y, Z] (a traced (3,) int array) of planes and lines stored in larger zero-padded
    buffers; the lookup then treats everything past it as outside the grid. None: the arrays are
    the grid."""
    if variant in LOOKUP_VARIANTS:
        return _rows_pair_features(planes, lines, xyz_n, variant, out_dtype, sizes)
    if variant == "pairs":
        return _pairs_features(planes, lines, xyz_n, out_dtype, sizes)
    if variant == "gather":
        return [_pair_gather(planes[k], lines[k], xyz_n, k, out_dtype, sizes) for k in range(3)]
    return [
        _vectorise(lambda p, k=k: _pair_point(planes[k], lines[k], p, k, out_dtype, sizes), xyz_n, variant)
        for k in range(3)
    ]


def vm_features(planes, lines, xyz_n: jax.Array, variant: str = "flat", out_dtype=None, sizes=None) -> jax.Array:
    """Per-component products concatenated in the official order (pair 0, 1, 2) -> (..., sum C)."""
    return jnp.concatenate(vm_pair_features(planes, lines, xyz_n, variant, out_dtype, sizes), axis=-1)


def vm_density_feature(
    planes, lines, xyz_n: jax.Array, variant: str = "flat", out_dtype=None, sizes=None
) -> jax.Array:
    """Density feature: the sum of every component product (official ``compute_densityfeature``)."""
    return sum(jnp.sum(f, axis=-1) for f in vm_pair_features(planes, lines, xyz_n, variant, out_dtype, sizes))


def cp_features(lines, xyz_n: jax.Array, variant: str = "flat", out_dtype=None, sizes=None) -> jax.Array:
    """CP component products ``line_0 * line_1 * line_2`` -> (..., R) (``sizes`` as in
    :func:`vm_pair_features`)."""
    if variant in LOOKUP_VARIANTS:
        return _rows_cp_features(lines, xyz_n, variant, out_dtype, sizes)
    if variant == "pairs":
        variant = "flat"  # CP has no plane/line pairs to stack
    if variant == "gather":
        flat = xyz_n.reshape(-1, 3)
        out = None
        for k in range(3):
            v = _gather_line(lines[k], flat[:, VEC_MODE[k]], _line_extent(sizes, k))
            if out_dtype is not None:
                v = v.astype(out_dtype)
            out = v if out is None else out * v
        return out.reshape(*xyz_n.shape[:-1], -1)

    def point(p):
        out = None
        for k in range(3):
            v = _linear_point(lines[k], p[VEC_MODE[k]], _line_extent(sizes, k))
            if out_dtype is not None:
                v = v.astype(out_dtype)
            out = v if out is None else out * v
        return out

    return _vectorise(point, xyz_n, variant)


# ---------------------------------------------------------------------------------------------
# Lookups as weighted row gathers with a float32-accumulating backward (LOOKUP_VARIANTS).
# ---------------------------------------------------------------------------------------------


def plane_corner_rows(shape: Sequence[int], u: jax.Array, v: jax.Array, hw=None) -> tuple[jax.Array, jax.Array]:
    """The four bilinear corners of points (u, v) (P,) in a plane of ``shape`` (H, W, C): row
    indices into the plane flattened to (H * W, C) and weights, (4, P) int32 and (4, P) float32.
    ``hw``: the active (H, W) inside a zero-padded plane (None: its shape); corners outside it weigh
    0 and index inside it."""
    H, W = shape[0], shape[1]
    h, w = (H, W) if hw is None else hw
    corners = _plane_corners(h, w, u, v)
    idx = jnp.stack([row * W + col for row, col, _ in corners])
    wts = jnp.stack([weight for _, _, weight in corners])
    return jax.lax.optimization_barrier((idx, wts))  # computed once per point, not per channel


def line_corner_rows(length: int, t: jax.Array, active=None) -> tuple[jax.Array, jax.Array]:
    """The two linear corners of points t (P,) on a line of ``length`` rows: (2, P) row indices and
    weights. ``active``: the active length inside a zero-padded line (None: ``length``)."""
    corners = _line_corners(length if active is None else active, t)
    idx = jnp.stack([i for i, _ in corners])
    wts = jnp.stack([weight for _, weight in corners])
    return jax.lax.optimization_barrier((idx, wts))


def _weighted_rows(variant: str) -> Callable:
    if variant == "pallas":
        from .lookup_pallas import weighted_rows

        return weighted_rows
    from .lookup_vjp import weighted_rows

    return functools.partial(weighted_rows, accumulate="scatter" if variant == "vjp" else "sorted")


def _rows_plane(plane: jax.Array, u: jax.Array, v: jax.Array, variant: str, hw=None) -> jax.Array:
    """Bilinear lookup of (P,) coordinates -> (P, C) float32 by a weighted-row-gather variant."""
    idx, wts = plane_corner_rows(plane.shape, u, v, hw)
    return _weighted_rows(variant)(plane.reshape(-1, plane.shape[-1]), idx, wts)


def _rows_line(line: jax.Array, t: jax.Array, variant: str, active=None) -> jax.Array:
    """Linear lookup of (P,) coordinates -> (P, C) float32 by a weighted-row-gather variant."""
    idx, wts = line_corner_rows(line.shape[0], t, active)
    return _weighted_rows(variant)(line, idx, wts)


def _rows_pair_features(planes, lines, xyz: jax.Array, variant: str, out_dtype, sizes) -> list[jax.Array]:
    flat = xyz.reshape(-1, 3)
    out = []
    for k in range(3):
        a, b = MAT_MODE[k]
        hw = None if sizes is None else (sizes[b], sizes[a])
        p = _rows_plane(planes[k], flat[:, a], flat[:, b], variant, hw)
        l = _rows_line(lines[k], flat[:, VEC_MODE[k]], variant, None if sizes is None else sizes[VEC_MODE[k]])
        dt = out_dtype or planes[k].dtype
        out.append((p.astype(dt) * l.astype(dt)).reshape(*xyz.shape[:-1], -1))
    return out


def _rows_cp_features(lines, xyz: jax.Array, variant: str, out_dtype, sizes) -> jax.Array:
    flat = xyz.reshape(-1, 3)
    out = None
    for k in range(3):
        axis = VEC_MODE[k]
        v = _rows_line(lines[k], flat[:, axis], variant, None if sizes is None else sizes[axis])
        v = v.astype(out_dtype or lines[k].dtype)
        out = v if out is None else out * v
    return out.reshape(*xyz.shape[:-1], -1)


def plane_lookup(plane: jax.Array, uv: jax.Array, variant: str = "flat", out_dtype=None, hw=None) -> jax.Array:
    """One plane's bilinear lookup at uv (P, 2) -> (P, C) in ``out_dtype`` (default: the plane's), by
    a variant that computes single lookups: flat, gather or one of ``LOOKUP_VARIANTS`` (pairs, rays
    and samples are layouts of ``flat`` over pairs and rays). ``hw``: the active (H, W) inside a
    zero-padded plane."""
    if variant in LOOKUP_VARIANTS:
        out = _rows_plane(plane, uv[:, 0], uv[:, 1], variant, hw)
    elif variant == "flat":
        wh = None if hw is None else jnp.stack([hw[1], hw[0]])
        out = jax.vmap(_bilinear_point, in_axes=(None, 0, 0, None))(plane, uv[:, 0], uv[:, 1], wh)
    elif variant == "gather":
        out = _gather_plane(plane, uv[:, 0], uv[:, 1], None if hw is None else (hw[1], hw[0]))
    else:
        raise ConfigError(f"render.vmap_variant: {variant!r} has no single-plane lookup; choose flat, gather or {LOOKUP_VARIANTS}")
    return out.astype(out_dtype or plane.dtype)


def line_lookup(line: jax.Array, t: jax.Array, variant: str = "flat", out_dtype=None, length=None) -> jax.Array:
    """One line's linear lookup at t (P,) -> (P, C), by the variants of :func:`plane_lookup`;
    ``length``: the active length inside a zero-padded line."""
    if variant in LOOKUP_VARIANTS:
        out = _rows_line(line, t, variant, length)
    elif variant == "flat":
        out = jax.vmap(_linear_point, in_axes=(None, 0, None))(line, t, length)
    elif variant == "gather":
        out = _gather_line(line, t, length)
    else:
        raise ConfigError(f"render.vmap_variant: {variant!r} has no single-line lookup; choose flat, gather or {LOOKUP_VARIANTS}")
    return out.astype(out_dtype or line.dtype)


# ---------------------------------------------------------------------------------------------
# Density through the recomposed grid (``RenderConfig.density_lookup = "dense"``).
# ---------------------------------------------------------------------------------------------


def vm_density_grid(planes, lines, out_dtype=None) -> jax.Array:
    """The density feature at every grid vertex, shape ``(X, Y, Z)``: ``sum_k sum_c plane_k[c] *
    line_k[c]`` evaluated on the vertex lattice (the VM decomposition recomposed; one matrix product
    per pair)."""
    axes = "xyz"
    out = None
    for k in range(3):
        a, b = MAT_MODE[k]
        P, L = planes[k], lines[k]
        if out_dtype is not None:
            P, L = P.astype(out_dtype), L.astype(out_dtype)
        term = jnp.einsum(f"{axes[b]}{axes[a]}q,{axes[VEC_MODE[k]]}q->xyz", P, L, precision=dot_precision(P.dtype))
        out = term if out is None else out + term
    return out


def cp_density_grid(lines, out_dtype=None) -> jax.Array:
    """The CP density feature at every grid vertex, ``(X, Y, Z)``: ``sum_r l_x[r] l_y[r] l_z[r]``."""
    by_axis = {VEC_MODE[k]: lines[k] for k in range(3)}
    lx, ly, lz = (by_axis[i] if out_dtype is None else by_axis[i].astype(out_dtype) for i in range(3))
    return jnp.einsum("xr,yr,zr->xyz", lx, ly, lz, precision=dot_precision(lx.dtype))


def trilinear(grid: jax.Array, xyz_n: jax.Array, sizes=None) -> jax.Array:
    """Trilinear lookup of a scalar grid ``(X, Y, Z)`` at normalised points (..., 3) in [-1, 1]
    (``grid_sample`` 3-D, align_corners=True, zero padding): 8 corner gathers per point.
    ``sizes``: the active [X, Y, Z] of a zero-padded grid."""
    X, Y, Z = grid.shape
    active = (X, Y, Z) if sizes is None else (sizes[0], sizes[1], sizes[2])
    flat_xyz = xyz_n.reshape(-1, 3)
    cx, cy, cz = (_line_corners(n, flat_xyz[:, i]) for i, n in enumerate(active))
    idx, wts = [], []
    for ix, wx in cx:
        for iy, wy in cy:
            for iz, wz in cz:
                idx.append((ix * Y + iy) * Z + iz)
                wts.append(wx * wy * wz)
    idx, wts = jax.lax.optimization_barrier((idx, wts))
    flat = grid.reshape(-1)
    out = sum(flat[i] * w.astype(flat.dtype) for i, w in zip(idx, wts))
    return out.reshape(xyz_n.shape[:-1])


def dense_density_feature(grid: dict, model: str, xyz_n: jax.Array, out_dtype=None, sizes=None) -> jax.Array:
    """The density feature through the recomposed grid: equal to the factored lookup (a bilinear
    plane value times a linear line value is the trilinear interpolant of their vertex products),
    up to float rounding. Per point it gathers 8 scalars instead of 18 rows of components (VM), so
    the backward pass scatters 8 values per point into the dense grid, then two matrix products
    per pair carry the gradient to the planes and lines."""
    if model == "VM":
        dense = vm_density_grid(grid["planes"], grid["lines"], out_dtype)
    else:
        dense = cp_density_grid(grid["lines"], out_dtype)
    return trilinear(dense, xyz_n, sizes)


def feature2density(feature: jax.Array, shift: float, act: str) -> jax.Array:
    """Official ``feature2density``: softplus(f + shift) or relu(f)."""
    if act == "softplus":
        return jax.nn.softplus(feature + shift)
    if act == "relu":
        return jax.nn.relu(feature)
    raise ConfigError(f"field.fea2dense_act: unknown activation {act!r}")


# ---------------------------------------------------------------------------------------------
# Initialisation, resize, shrink.
# ---------------------------------------------------------------------------------------------


def plane_shape(grid_size: Sequence[int], k: int, comps: int) -> tuple[int, int, int]:
    return (*plane_size(grid_size, k), int(comps))


def line_shape(grid_size: Sequence[int], k: int, comps: int) -> tuple[int, int]:
    return (line_size(grid_size, k), int(comps))


def init_vm(key: jax.Array, grid_size: Sequence[int], n_comp: Sequence[int], scale: float) -> dict:
    """Official VM init: every plane and line ~ scale * N(0, 1)."""
    keys = jax.random.split(key, 6)
    planes = [scale * jax.random.normal(keys[k], plane_shape(grid_size, k, n_comp[k])) for k in range(3)]
    lines = [scale * jax.random.normal(keys[3 + k], line_shape(grid_size, k, n_comp[k])) for k in range(3)]
    return {"planes": planes, "lines": lines}


def init_cp(key: jax.Array, grid_size: Sequence[int], rank: int, scale: float) -> dict:
    """Official CP init: every line ~ scale * N(0, 1)."""
    keys = jax.random.split(key, 3)
    return {"lines": [scale * jax.random.normal(keys[k], line_shape(grid_size, k, rank)) for k in range(3)]}


def _resize_axis_aligned(x: jax.Array, axis: int, new: int) -> jax.Array:
    """Linear resize of one axis with ``align_corners=True`` (the endpoints stay in place)."""
    old = x.shape[axis]
    if old == new:
        return x
    if new == 1 or old == 1:
        pos = np.zeros(new, dtype=np.float32)
    else:
        # torch computes the source index as dst * (old - 1) / (new - 1) in float32
        pos = np.arange(new, dtype=np.float32) * (np.float32(old - 1) / np.float32(new - 1))
    i0 = np.clip(np.floor(pos).astype(np.int32), 0, old - 1)
    i1 = np.minimum(i0 + 1, old - 1)
    frac = (pos - i0).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = new
    f = jnp.asarray(frac).reshape(shape).astype(x.dtype)
    return jnp.take(x, jnp.asarray(i0), axis=axis) * (1 - f) + jnp.take(x, jnp.asarray(i1), axis=axis) * f


def upsample_vm(planes, lines, reso: Sequence[int]):
    """Resize a VM grid to ``reso`` [X, Y, Z] (bilinear / linear, ``align_corners=True``)."""
    new_planes, new_lines = [], []
    for k in range(3):
        a, b = MAT_MODE[k]
        p = _resize_axis_aligned(planes[k], 0, int(reso[b]))
        new_planes.append(_resize_axis_aligned(p, 1, int(reso[a])))
        new_lines.append(_resize_axis_aligned(lines[k], 0, int(reso[VEC_MODE[k]])))
    return new_planes, new_lines


def upsample_cp(lines, reso: Sequence[int]):
    """Resize a CP grid's lines to ``reso`` [X, Y, Z]."""
    return [_resize_axis_aligned(lines[k], 0, int(reso[VEC_MODE[k]])) for k in range(3)]


def shrink_vm(planes, lines, t_l: Sequence[int], b_r: Sequence[int]):
    """Crop a VM grid to voxel index ranges [t_l, b_r) per axis (official ``shrink``)."""
    new_planes, new_lines = [], []
    for k in range(3):
        a, b = MAT_MODE[k]
        new_planes.append(planes[k][t_l[b] : b_r[b], t_l[a] : b_r[a]])
        v = VEC_MODE[k]
        new_lines.append(lines[k][t_l[v] : b_r[v]])
    return new_planes, new_lines


def shrink_cp(lines, t_l: Sequence[int], b_r: Sequence[int]):
    return [lines[k][t_l[VEC_MODE[k]] : b_r[VEC_MODE[k]]] for k in range(3)]


def grid_size_of(grid: dict) -> list[int]:
    """[X, Y, Z] of a VM or CP grid, read from its line lengths."""
    lines = grid["lines"]
    size = [0, 0, 0]
    for k in range(3):
        size[VEC_MODE[k]] = int(lines[k].shape[0])
    return size
