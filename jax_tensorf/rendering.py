"""Volume rendering with static shapes: raw2alpha, compositing, depth, appearance selection.

The official renderer evaluates density only where samples are valid (inside the box and the alpha
mask) and appearance only where the compositing weight exceeds 1e-4. Both are dynamic shapes. Here
they are emulated with fixed shapes in selectable ways:

- samples can be *compacted*: the valid samples of the batch are packed into a buffer of fixed
  capacity before the density lookup (``RenderConfig.sample_capacity``), or every sample is looked up
  and invalid ones are zeroed;
- appearance is computed for ``all`` samples, for the ``threshold`` ones (masked in place, or
  compacted to a fixed capacity with ``app_capacity``), for the ``topk`` largest weights per ray, or for
  a weighted ``sample`` without replacement per ray (the seed's scheme, with its unbiasing).

Samples that do not fit a capacity are dropped and counted (``stats["sample_overflow"]``,
``stats["app_overflow"]``) so that callers can see, and react to, a capacity that is too small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tensorf_common.config import ConfigError

from .sampling import ray_aabb_tmin, sample_ray

DensityFn = Callable[[jax.Array], jax.Array]
"""World points (P, 3) -> sigma (P,)."""
AppearanceFn = Callable[[jax.Array, jax.Array], jax.Array]
"""(world points (P, 3), unit view directions (P, 3)) -> rgb (P, 3)."""
MaskFn = Callable[[jax.Array], jax.Array]
"""World points (..., 3) -> bool (...): inside the alpha mask."""


def raw2alpha(sigma: jax.Array, dist: jax.Array):
    """Official ``raw2alpha``: alpha = 1 - exp(-sigma * dist); T = cumprod(1 - alpha + 1e-10)
    (exclusive); weights = alpha * T. Returns ``(alpha, weights, T_last)``.

    The product is a parallel prefix scan (``associative_scan``), 2x faster than ``cumprod`` on
    XLA's CPU backend; it multiplies in another order, so it agrees with a sequential product to
    float32 rounding."""
    alpha = 1.0 - jnp.exp(-sigma * dist)
    trans = jax.lax.associative_scan(jnp.multiply, 1.0 - alpha + 1e-10, axis=-1)
    T = jnp.concatenate([jnp.ones_like(alpha[..., :1]), trans], axis=-1)
    weights = alpha * T[..., :-1]
    return alpha, weights, T[..., -1]


def sample_dists(z_vals: jax.Array) -> jax.Array:
    """Spacing of consecutive samples, with 0 for the last one (official, not 1e10)."""
    return jnp.concatenate([z_vals[..., 1:] - z_vals[..., :-1], jnp.zeros_like(z_vals[..., :1])], axis=-1)


def composite(weights: jax.Array, rgb: jax.Array, z_vals: jax.Array, white_bg: bool):
    """``rgb_map = sum(w * rgb) (+ 1 - acc on white), clamped``; depth is the expected distance
    ``sum(w * z)``. Returns ``(rgb_map (R,3), depth_map (R,), acc_map (R,))``."""
    acc = jnp.sum(weights, axis=-1)
    rgb_map = jnp.sum(weights[..., None] * rgb, axis=-2)
    return finish_rgb(rgb_map, acc, white_bg), jnp.sum(weights * z_vals, axis=-1), acc


def finish_rgb(rgb_map: jax.Array, acc: jax.Array, white_bg: bool) -> jax.Array:
    if white_bg:
        rgb_map = rgb_map + (1.0 - acc[..., None])
    return jnp.clip(rgb_map, 0.0, 1.0)


def median_depth(weights: jax.Array, z_vals: jax.Array, far: float) -> jax.Array:
    """Distance of the first sample where the accumulated weight reaches 0.5; ``far`` where it never does."""
    cum = jnp.cumsum(weights, axis=-1)
    crossed = cum >= 0.5
    first = jnp.argmax(crossed, axis=-1)
    z = jnp.take_along_axis(z_vals, first[..., None], axis=-1)[..., 0]
    return jnp.where(jnp.any(crossed, axis=-1), z, far)


def materialize(mask: jax.Array) -> jax.Array:
    """``mask`` itself, computed once into a buffer that later ops read.

    XLA's fusion duplicates cheap elementwise producers into each consumer: the mask's producer
    (sampling, the alpha-mask query) was recomputed inside every level of the prefix scan (45 ms
    instead of 6 ms for 2048 x 582 samples on 2 CPU cores). ``optimization_barrier`` does not stop
    this (XLA CPU expands barriers before fusion); a conditional does, since fusion never crosses
    control flow. Exact: the false branch runs only when the mask has no True entry, and then
    returns the same all-False mask."""
    return jax.lax.cond(jnp.any(mask), lambda m: m, jnp.zeros_like, mask)


def compact(mask: jax.Array, capacity: int):
    """Indices of the first ``capacity`` True entries of a flat mask (fixed shape).

    Returns ``(idx, ok, count)``: ``idx`` (capacity,) int32 (padding entries equal ``mask.size``),
    ``ok`` which entries are real, and the number of True entries (overflow = count - capacity).
    Same result as ``jnp.nonzero(mask, size=capacity)``, 3x faster on XLA's CPU backend: positions
    come from a parallel prefix sum and entries past the capacity are dropped by the scatter.
    """
    mask = materialize(mask)
    pos = jax.lax.associative_scan(jnp.add, mask.astype(jnp.int32)) - 1
    target = jnp.where(mask, pos, capacity)
    idx = jnp.full((capacity,), mask.size, jnp.int32).at[target].set(
        jnp.arange(mask.size, dtype=jnp.int32), mode="drop"
    )
    return idx, idx < mask.size, pos[-1] + 1


def bucket_capacity(n: float, limit: int) -> int:
    """Round a capacity up to the next of a few sizes per octave (multiples of 1024), so that
    capacities sized from probes rarely change the compiled shape; at most ``limit``."""
    n = max(1024.0, float(n))
    e = np.floor(np.log2(n))
    for frac in (1.0, 1.25, 1.5, 1.75, 2.0):
        size = int(np.ceil(2.0**e * frac / 1024.0) * 1024)
        if size >= n:
            return int(min(size, limit))
    return int(limit)  # pragma: no cover


@dataclass(frozen=True)
class RenderOptions:
    """Static settings of one compiled renderer (a change recompiles)."""

    n_samples: int
    near: float
    far: float
    white_bg: bool
    distance_scale: float
    appearance: str = "threshold"
    weight_thres: float = 1e-4
    topk: int = 32
    sample_capacity: Optional[int] = None
    """Absolute capacity (samples per batch) for valid-sample compaction; None = no compaction."""
    app_capacity: Optional[int] = None
    """Absolute capacity for thresholded appearance compaction; None = mask in place."""
    want_depth: bool = False
    depth: str = "mean"
    density_lookup: str = "factored"
    """``factored`` or ``dense`` (``RenderConfig.density_lookup``)."""


def render_rays(
    rays_o: jax.Array,
    rays_d: jax.Array,
    aabb: jax.Array,
    step_size,
    density_fn: DensityFn,
    app_fn: AppearanceFn,
    mask_fn: Optional[MaskFn],
    opts: RenderOptions,
    jitter: Optional[jax.Array] = None,
    key: Optional[jax.Array] = None,
    ray_offset=0,
    n_active=None,
):
    """Render a batch of rays. Returns a dict with ``rgb`` (R,3), ``acc`` (R,), optionally ``depth``,
    and ``stats`` (overflow counts, valid and appearance sample counts).

    ``jitter`` is one offset per ray (training) or None (evaluation). ``key`` drives the ``sample``
    strategy only (per-ray keys: ``fold_in(key, ray_offset + i)``, so a batch split across devices
    draws what the whole batch would). ``n_active`` (a traced count <= ``opts.n_samples``): only the
    first ``n_active`` samples of each ray exist, the last of them with the official zero interval,
    as if ``opts.n_samples`` were ``n_active`` (static-shape training).
    """
    if opts.sample_capacity is not None and opts.appearance in ("all", "threshold"):
        return _render_packed(rays_o, rays_d, aabb, step_size, density_fn, app_fn, mask_fn, opts, jitter, n_active)
    R, N = rays_o.shape[0], opts.n_samples
    z_vals, xyz, valid = sample_ray(rays_o, rays_d, aabb, opts.near, opts.far, step_size, N, jitter)
    if mask_fn is not None:
        valid = valid & mask_fn(xyz)
    if n_active is not None:
        valid = valid & (jnp.arange(N)[None, :] < n_active)
    dirs = rays_d  # official: the (unit) ray directions are the view directions
    stats = {"valid_samples": jnp.sum(valid, dtype=jnp.int32)}

    flat_xyz = xyz.reshape(R * N, 3)
    flat_valid = valid.reshape(R * N)
    packed = None
    if opts.sample_capacity is None:
        sigma = jnp.where(flat_valid, density_fn(flat_xyz), 0.0)
        stats["sample_overflow"] = jnp.int32(0)
    else:
        idx, ok, count = compact(flat_valid, opts.sample_capacity)
        packed = (idx, ok)
        pts = flat_xyz[jnp.minimum(idx, R * N - 1)]
        s = jnp.where(ok, density_fn(pts), 0.0)
        sigma = jnp.zeros((R * N,), s.dtype).at[idx].set(s, mode="drop")
        stats["sample_overflow"] = jnp.maximum(count - opts.sample_capacity, 0)
    sigma = sigma.reshape(R, N).astype(jnp.float32)

    dists = sample_dists(z_vals)
    if n_active is not None:  # the last existing sample gets the official zero interval
        dists = jnp.where(jnp.arange(N)[None, :] == n_active - 1, 0.0, dists)
    _, weights, t_last = raw2alpha(sigma, dists * opts.distance_scale)
    acc = jnp.sum(weights, axis=-1)
    rgb_map = _appearance(weights, t_last, xyz, dirs, valid, packed, app_fn, opts, key, stats, ray_offset)

    out = {"rgb": finish_rgb(rgb_map, acc, opts.white_bg), "acc": acc, "stats": stats}
    if opts.want_depth:
        if opts.depth == "median":
            out["depth"] = median_depth(weights, z_vals, opts.far)
        else:
            out["depth"] = jnp.sum(weights * z_vals, axis=-1)
    return out


def segment_starts(ray: jax.Array) -> jax.Array:
    """True where a sorted segment-id array starts a new segment."""
    return jnp.concatenate([jnp.ones((1,), bool), ray[1:] != ray[:-1]])


def segmented_cumprod(x: jax.Array, starts: jax.Array) -> jax.Array:
    """Inclusive product of ``x`` within segments that begin where ``starts`` is True (a parallel
    prefix scan over (value, flag) pairs)."""

    def combine(a, b):
        va, fa = a
        vb, fb = b
        return jnp.where(fb, vb, va * vb), fa | fb

    return jax.lax.associative_scan(combine, (x, starts))[0]


def _render_packed(rays_o, rays_d, aabb, step_size, density_fn, app_fn, mask_fn, opts: RenderOptions, jitter,
                   n_active=None):
    """``render_rays`` on the valid samples only, for the ``all`` and ``threshold`` strategies.

    A sample outside the box or the mask has sigma 0, so alpha 0 and a transmittance factor
    ``1 - 0 + 1e-10``, which is exactly 1 in float32: it changes nothing along its ray. So after the
    valid samples are packed (in ray order), everything runs on the packed array: alpha, the
    transmittance as a per-ray (segmented) prefix product, the weights, the appearance selection
    and the per-ray sums (segment sums). Only sampling and the mask query touch every sample.
    Same function as the dense path (up to float rounding), several times less work on sparse scenes.
    """
    R, N = rays_o.shape[0], opts.n_samples
    t_min = ray_aabb_tmin(rays_o, rays_d, aabb, opts.near, opts.far)
    z_vals, xyz, valid = sample_ray(rays_o, rays_d, aabb, opts.near, opts.far, step_size, N, jitter)
    if mask_fn is not None:
        valid = valid & mask_fn(xyz)
    if n_active is not None:
        valid = valid & (jnp.arange(N)[None, :] < n_active)
    idx, ok, count = compact(valid.reshape(R * N), opts.sample_capacity)
    stats = {
        "valid_samples": count,
        "sample_overflow": jnp.maximum(count - opts.sample_capacity, 0),
    }
    ray = jnp.where(ok, idx // N, R)  # padding entries get the out-of-range segment R
    ray_c = jnp.minimum(ray, R - 1)
    i = idx % N
    # positions and spacing of the packed samples, by the formula sample_ray uses
    offset = i.astype(rays_o.dtype) if jitter is None else i.astype(rays_o.dtype) + jitter[ray_c]
    z = t_min[ray_c] + step_size * offset
    z_next = t_min[ray_c] + step_size * (offset + 1.0)
    last = N - 1 if n_active is None else n_active - 1
    dist = jnp.where(i < last, z_next - z, 0.0)  # the official last interval is 0
    o, d = rays_o[ray_c], rays_d[ray_c]
    pts = o + d * z[:, None]
    sigma = jnp.where(ok, density_fn(pts), 0.0).astype(jnp.float32)
    alpha = 1.0 - jnp.exp(-sigma * dist * opts.distance_scale)
    factor = 1.0 - alpha + 1e-10
    starts = segment_starts(ray)
    incl = segmented_cumprod(factor, starts)
    T = jnp.where(starts, 1.0, jnp.concatenate([jnp.ones((1,), incl.dtype), incl[:-1]]))
    w = jnp.where(ok, alpha * T, 0.0)

    if opts.appearance == "threshold" and opts.app_capacity:
        sel = w > opts.weight_thres
        j, ok2, count2 = compact(sel, opts.app_capacity)
        jc = jnp.minimum(j, w.shape[0] - 1)
        wj = jnp.where(ok2, w[jc], 0.0)
        c = app_fn(pts[jc], d[jc]).astype(jnp.float32)
        rgb_map = jax.ops.segment_sum(wj[:, None] * c, jnp.where(ok2, ray[jc], R), num_segments=R)
        stats["app_samples"] = count2
        stats["app_overflow"] = jnp.maximum(count2 - opts.app_capacity, 0)
    else:
        c = app_fn(pts, d).astype(jnp.float32)
        if opts.appearance == "threshold":
            sel = w > opts.weight_thres
            c = jnp.where(sel[:, None], c, 0.0)
            stats["app_samples"] = jnp.sum(sel, dtype=jnp.int32)
        else:
            stats["app_samples"] = jnp.minimum(count, opts.sample_capacity)
        stats["app_overflow"] = jnp.int32(0)
        rgb_map = jax.ops.segment_sum(w[:, None] * c, ray, num_segments=R)
    acc = jax.ops.segment_sum(w, ray, num_segments=R)
    out = {"rgb": finish_rgb(rgb_map, acc, opts.white_bg), "acc": acc, "stats": stats}
    if opts.want_depth:
        if opts.depth == "median":
            cum = segmented_cumsum(w, starts)
            first = (cum >= 0.5) & ((cum - w) < 0.5) & ok
            zc = jax.ops.segment_max(jnp.where(first, z, -jnp.inf), ray, num_segments=R)
            out["depth"] = jnp.where(jnp.isfinite(zc), zc, opts.far)
        else:
            out["depth"] = jax.ops.segment_sum(w * z, ray, num_segments=R)
    return out


def segmented_cumsum(x: jax.Array, starts: jax.Array) -> jax.Array:
    """Inclusive sum of ``x`` within segments that begin where ``starts`` is True."""

    def combine(a, b):
        va, fa = a
        vb, fb = b
        return jnp.where(fb, vb, va + vb), fa | fb

    return jax.lax.associative_scan(combine, (x, starts))[0]


def _appearance(weights, t_last, xyz, dirs, valid, packed, app_fn, opts: RenderOptions, key, stats, ray_offset=0):
    """``sum_n w_n * rgb_n`` over the samples that the strategy selects -> (R, 3)."""
    R, N = weights.shape
    strategy = opts.appearance
    if strategy == "topk" and opts.topk >= N:
        strategy = "all"  # every sample is in the top k: the 'all' path, so both agree bit for bit
    if strategy in ("all", "threshold") and not (strategy == "threshold" and opts.app_capacity):
        dirs_n = jnp.broadcast_to(dirs[:, None, :], xyz.shape)
        if packed is None:
            rgb = app_fn(xyz.reshape(R * N, 3), dirs_n.reshape(R * N, 3)).reshape(R, N, 3)
        else:
            # appearance only where density was evaluated: reuse the valid-sample compaction
            idx, ok = packed
            safe = jnp.minimum(idx, R * N - 1)
            c = app_fn(xyz.reshape(R * N, 3)[safe], dirs_n.reshape(R * N, 3)[safe])
            c = jnp.where(ok[:, None], c, 0.0)
            rgb = jnp.zeros((R * N, 3), c.dtype).at[idx].set(c, mode="drop").reshape(R, N, 3)
        if strategy == "threshold":
            sel = weights > opts.weight_thres
            stats["app_samples"] = jnp.sum(sel, dtype=jnp.int32)
            rgb = jnp.where(sel[..., None], rgb, 0.0)
        else:
            stats["app_samples"] = jnp.sum(valid, dtype=jnp.int32)
        stats["app_overflow"] = jnp.int32(0)
        return jnp.sum(weights[..., None] * rgb.astype(weights.dtype), axis=-2)

    if strategy == "threshold":  # compacted to a fixed capacity
        sel = (weights > opts.weight_thres).reshape(R * N)
        idx, ok, count = compact(sel, opts.app_capacity)
        safe = jnp.minimum(idx, R * N - 1)
        ray = safe // N
        w = jnp.where(ok, weights.reshape(R * N)[safe], 0.0)
        c = app_fn(xyz.reshape(R * N, 3)[safe], dirs[ray]).astype(w.dtype)
        stats["app_samples"] = count
        stats["app_overflow"] = jnp.maximum(count - opts.app_capacity, 0)
        return jax.ops.segment_sum(w[:, None] * c, ray, num_segments=R)

    k = min(opts.topk, N)
    if strategy == "topk":
        _, idx = jax.lax.top_k(weights, k)
    elif strategy == "sample":
        if key is None:
            raise ConfigError("render.appearance: 'sample' needs a PRNG key")
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ray_offset + jnp.arange(R))
        gumbel = jax.vmap(lambda kk: jax.random.gumbel(kk, (N,)))(keys)
        _, idx = jax.lax.top_k(jnp.log(weights + 1e-20) + gumbel, k)
    else:
        raise ConfigError(f"render.appearance: unknown strategy {strategy!r}")
    idx = jnp.sort(idx, axis=-1)  # sample order: k = N then sums exactly like 'all'
    w = jnp.take_along_axis(weights, idx, axis=-1)
    pts = jnp.take_along_axis(xyz, idx[..., None], axis=1)
    c = app_fn(pts.reshape(R * k, 3), jnp.repeat(dirs, k, axis=0)).reshape(R, k, 3).astype(w.dtype)
    stats["app_samples"] = jnp.int32(R * k)
    stats["app_overflow"] = jnp.int32(0)
    rgb_map = jnp.sum(w[..., None] * c, axis=-2)
    if strategy == "sample":
        # self-normalised unbiasing of the seed: scale to the full opacity of the ray
        unbias = (1.0 - t_last + 1e-8) / (jnp.sum(w, axis=-1) + 1e-8)
        rgb_map = rgb_map * jax.lax.stop_gradient(unbias)[:, None]
    return rgb_map
