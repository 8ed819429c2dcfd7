"""Ray-box entry and uniformly stepped samples (official ``sample_ray``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize_coord(xyz: jax.Array, aabb: jax.Array) -> jax.Array:
    """World points -> [-1, 1] over the box: ``(xyz - aabb[0]) * 2 / (aabb[1] - aabb[0]) - 1``."""
    inv = 2.0 / (aabb[1] - aabb[0])
    return (xyz - aabb[0]) * inv - 1.0


def ray_aabb_tmin(rays_o: jax.Array, rays_d: jax.Array, aabb: jax.Array, near: float, far: float) -> jax.Array:
    """Distance at which each ray enters the box, clamped to [near, far]; zero direction
    components are replaced by 1e-6 (official)."""
    vec = jnp.where(rays_d == 0, 1e-6, rays_d)
    rate_a = (aabb[1] - rays_o) / vec
    rate_b = (aabb[0] - rays_o) / vec
    return jnp.clip(jnp.max(jnp.minimum(rate_a, rate_b), axis=-1), near, far)


def ray_aabb_hit(rays_o: jax.Array, rays_d: jax.Array, aabb: jax.Array) -> jax.Array:
    """Whether each ray's line crosses the box (official ``filtering_rays(bbox_only=True)``)."""
    vec = jnp.where(rays_d == 0, 1e-6, rays_d)
    rate_a = (aabb[1] - rays_o) / vec
    rate_b = (aabb[0] - rays_o) / vec
    t_min = jnp.max(jnp.minimum(rate_a, rate_b), axis=-1)
    t_max = jnp.min(jnp.maximum(rate_a, rate_b), axis=-1)
    return t_max > t_min


def sample_ray(
    rays_o: jax.Array,
    rays_d: jax.Array,
    aabb: jax.Array,
    near: float,
    far: float,
    step_size,
    n_samples: int,
    jitter: jax.Array | None = None,
    first=None,
):
    """Samples ``t_min + step * (i + jitter)`` for i < n_samples, one jitter per ray (training) or
    none (evaluation). Returns ``(z_vals (R,N), xyz (R,N,3), in_box (R,N))``. With ``first`` (an
    integer, may be traced) the samples are ``i = first, ..., first + n_samples - 1`` instead,
    with the same values as those samples of a longer call."""
    t_min = ray_aabb_tmin(rays_o, rays_d, aabb, near, far)
    rng = jnp.arange(n_samples, dtype=rays_o.dtype)[None, :]
    if first is not None:
        rng = rng + jnp.asarray(first).astype(rays_o.dtype)
    if jitter is not None:
        rng = rng + jitter[:, None]
    z_vals = t_min[:, None] + step_size * rng
    xyz = rays_o[:, None, :] + rays_d[:, None, :] * z_vals[..., None]
    in_box = jnp.all((aabb[0] <= xyz) & (xyz <= aabb[1]), axis=-1)
    return z_vals, xyz, in_box


def per_ray_jitter(key: jax.Array, n_rays: int, offset=0) -> jax.Array:
    """One U[0, 1) offset per ray, each from its own key (``fold_in`` of the ray's index in the
    batch, ``offset + i``), so that a ray's jitter does not depend on how the batch is split across
    devices (the seed used one key for every ray)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(n_rays))
    return jax.vmap(lambda k: jax.random.uniform(k, ()))(keys)
