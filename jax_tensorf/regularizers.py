"""Regularisers on the grids (official ``density_L1``, ``TVLoss`` on planes, ``vector_comp_diffs``).

Grids are channel-last (see DEVELOPERS.md): planes (H, W, C), lines (L, C).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _extents(grid: dict, sizes):
    """Active (H, W) per plane and length per line, or None per array when ``sizes`` is None."""
    from .fields import MAT_MODE, VEC_MODE

    if sizes is None:
        return [None] * len(grid.get("planes", [])), [None] * len(grid["lines"])
    planes = [(sizes[MAT_MODE[k][1]], sizes[MAT_MODE[k][0]]) for k in range(len(grid.get("planes", [])))]
    return planes, [sizes[VEC_MODE[k]] for k in range(len(grid["lines"]))]


def _active(shape, extent) -> jax.Array:
    """Which entries of a zero-padded plane (H, W, C) or line (L, C) lie in its active extent."""
    if len(shape) == 3:
        return (jnp.arange(shape[0])[:, None, None] < extent[0]) & (jnp.arange(shape[1])[None, :, None] < extent[1])
    return jnp.arange(shape[0])[:, None] < extent


def density_l1(grid: dict, sizes=None) -> jax.Array:
    """Sum over pairs of ``mean|plane_k| + mean|line_k|`` (CP: lines only). ``sizes``: the active
    grid size of zero-padded buffers: the means are over the active part, and the padding gets no
    gradient (JAX's derivative of ``|x|`` at 0 is 1, which would push the padding off zero)."""
    plane_ext, line_ext = _extents(grid, sizes)
    total = jnp.float32(0.0)
    for x, ext in list(zip(grid.get("planes", []), plane_ext)) + list(zip(grid["lines"], line_ext)):
        if ext is None:
            total = total + jnp.mean(jnp.abs(x))
        else:
            count = (ext[0] * ext[1] if x.ndim == 3 else ext) * x.shape[-1]
            total = total + jnp.sum(jnp.where(_active(x.shape, ext), jnp.abs(x), 0.0)) / count
    return total


def tv_plane(plane: jax.Array, hw=None) -> jax.Array:
    """Official ``TVLoss`` of one plane: ``2 * (sum dh^2 / (C (H-1) W) + sum dw^2 / (C H (W-1)))``.
    ``hw``: the active (H, W) of a zero-padded plane (differences across its edge are left out)."""
    H, W, C = plane.shape
    dh = plane[1:] - plane[:-1]
    dw = plane[:, 1:] - plane[:, :-1]
    if hw is None:
        return 2.0 * (jnp.sum(dh * dh) / (C * (H - 1) * W) + jnp.sum(dw * dw) / (C * H * (W - 1)))
    h, w = hw
    dh = jnp.where(_active(dh.shape, (h - 1, w)), dh, 0.0)
    dw = jnp.where(_active(dw.shape, (h, w - 1)), dw, 0.0)
    return 2.0 * (jnp.sum(dh * dh) / (C * (h - 1) * w) + jnp.sum(dw * dw) / (C * h * (w - 1)))


def tv_line(line: jax.Array, length=None) -> jax.Array:
    """``TVLoss`` of a line seen as a (1, C, L, 1) tensor: ``2 * sum dl^2 / (C (L-1))`` (the width
    term of a 1-wide tensor is 0/0 in the official code; here it is left out). ``length``: the active
    length of a zero-padded line."""
    L, C = line.shape
    d = line[1:] - line[:-1]
    if length is None:
        return 2.0 * jnp.sum(d * d) / (C * (L - 1))
    d = jnp.where(_active(d.shape, length - 1), d, 0.0)
    return 2.0 * jnp.sum(d * d) / (C * (length - 1))


def tv_loss(grid: dict, sizes=None) -> jax.Array:
    """Official TV regulariser: planes x 1e-2 (VM); lines x 1e-3 (CP)."""
    plane_ext, line_ext = _extents(grid, sizes)
    if "planes" in grid:
        return sum(tv_plane(p, e) for p, e in zip(grid["planes"], plane_ext)) * 1e-2
    return sum(tv_line(l, e) for l, e in zip(grid["lines"], line_ext)) * 1e-3


def ortho_loss(lines) -> jax.Array:
    """Official ``vectorDiffs``: mean absolute off-diagonal of each line's Gram matrix, summed.
    A single-component line has no off-diagonal entry and adds 0 (officially a NaN mean)."""
    total = jnp.float32(0.0)
    for l in lines:
        v = l.T  # (C, L)
        C = v.shape[0]
        if C < 2:
            continue
        dotp = jnp.matmul(v, v.T, precision=jax.lax.Precision.HIGHEST)
        off = dotp.reshape(-1)[1:].reshape(C - 1, C + 1)[:, :-1]
        total = total + jnp.mean(jnp.abs(off))
    return total
