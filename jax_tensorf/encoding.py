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


# Cody-Waite split of pi/2 (the first two parts have trailing zero bits, so k * part is exact)
_PIO2_1 = 1.5703125
_PIO2_2 = 4.837512969970703125e-4
_PIO2_3 = 7.54978995489188216e-8


def sincos(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sin(x), cos(x))`` in one pass: range reduction by pi/2 (three-part Cody-Waite) and the
    Cephes single-precision polynomials on [-pi/4, pi/4]. Max error about 2 ulp of 1 for
    |x| < 1e3 (tested against ``jnp.sin``); roughly 10x faster than ``jnp.sin`` + ``jnp.cos`` on
    XLA's CPU backend, where those two dominated the positional encoding."""
    dt = x.dtype
    k = jnp.round(x * jnp.asarray(0.6366197723675814, dt))
    r = ((x - k * jnp.asarray(_PIO2_1, dt)) - k * jnp.asarray(_PIO2_2, dt)) - k * jnp.asarray(_PIO2_3, dt)
    r2 = r * r
    s = r + r * r2 * (-1.6666654611e-1 + r2 * (8.3321608736e-3 + r2 * -1.9515295891e-4))
    c = 1.0 - 0.5 * r2 + r2 * r2 * (4.166664568298827e-2 + r2 * (-1.388731625493765e-3 + r2 * 2.443315711809948e-5))
    q = k.astype(jnp.int32) & 3
    sin = jnp.where(q == 0, s, jnp.where(q == 1, c, jnp.where(q == 2, -s, -c)))
    cos = jnp.where(q == 0, c, jnp.where(q == 1, -s, jnp.where(q == 2, -c, s)))
    return sin.astype(dt), cos.astype(dt)


def positional_encoding(x: jax.Array, freqs: int) -> jax.Array:
    """Official ``positional_encoding``: frequencies 2**arange(freqs) (no pi), dim-major layout,
    ``[sin(all), cos(all)]``: (..., D) -> (..., 2 * freqs * D)."""
    bands = (2.0 ** jnp.arange(freqs)).astype(x.dtype)
    pts = (x[..., None] * bands).reshape(*x.shape[:-1], freqs * x.shape[-1])
    s, c = sincos(pts)
    return jnp.concatenate([s, c], axis=-1)


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
