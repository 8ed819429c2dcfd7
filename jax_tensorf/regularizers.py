"""Regularisers on the grids (official ``density_L1``, ``TVLoss`` on planes, ``vector_comp_diffs``).

Grids are channel-last (see DEVELOPERS.md): planes (H, W, C), lines (L, C).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def density_l1(grid: dict) -> jax.Array:
    """Sum over pairs of ``mean|plane_k| + mean|line_k|`` (CP: lines only)."""
    total = jnp.float32(0.0)
    for p in grid.get("planes", []):
        total = total + jnp.mean(jnp.abs(p))
    for l in grid["lines"]:
        total = total + jnp.mean(jnp.abs(l))
    return total


def tv_plane(plane: jax.Array) -> jax.Array:
    """Official ``TVLoss`` of one plane: ``2 * (sum dh^2 / (C (H-1) W) + sum dw^2 / (C H (W-1)))``."""
    H, W, C = plane.shape
    dh = plane[1:] - plane[:-1]
    dw = plane[:, 1:] - plane[:, :-1]
    return 2.0 * (jnp.sum(dh * dh) / (C * (H - 1) * W) + jnp.sum(dw * dw) / (C * H * (W - 1)))


def tv_line(line: jax.Array) -> jax.Array:
    """``TVLoss`` of a line seen as a (1, C, L, 1) tensor: ``2 * sum dl^2 / (C (L-1))`` (the width
    term of a 1-wide tensor is 0/0 in the official code; here it is left out)."""
    L, C = line.shape
    d = line[1:] - line[:-1]
    return 2.0 * jnp.sum(d * d) / (C * (L - 1))


def tv_loss(grid: dict) -> jax.Array:
    """Official TV regulariser: planes x 1e-2 (VM); lines x 1e-3 (CP)."""
    if "planes" in grid:
        return sum(tv_plane(p) for p in grid["planes"]) * 1e-2
    return sum(tv_line(l) for l in grid["lines"]) * 1e-3


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
