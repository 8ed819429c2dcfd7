"""Positional encoding (official ordering) and real spherical harmonics bases."""

from __future__ import annotations

import jax
import jax.numpy as jnp

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)


def positional_encoding(x: jax.Array, freqs: int) -> jax.Array:
    """Official ``positional_encoding``: frequencies 2**arange(freqs) (no pi), dim-major layout,
    ``[sin(all), cos(all)]``: (..., D) -> (..., 2 * freqs * D)."""
    bands = (2.0 ** jnp.arange(freqs)).astype(x.dtype)
    pts = (x[..., None] * bands).reshape(*x.shape[:-1], freqs * x.shape[-1])
    return jnp.concatenate([jnp.sin(pts), jnp.cos(pts)], axis=-1)


def eval_sh_bases(deg: int, dirs: jax.Array) -> jax.Array:
    """Real SH bases up to degree 2 (the plenoctree constants used by the official ``sh.py``):
    dirs (..., 3) unit vectors -> (..., (deg + 1) ** 2)."""
    if not 0 <= deg <= 2:
        raise ValueError(f"eval_sh_bases: degree {deg} is not supported (0..2)")
    x, y, z = dirs[..., 0], dirs[..., 1], dirs[..., 2]
    out = [jnp.full_like(x, SH_C0)]
    if deg > 0:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if deg > 1:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    return jnp.stack(out, axis=-1)
