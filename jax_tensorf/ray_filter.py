"""Training-ray filters on the device: the rays that meet a box, and the rays whose evaluation
samples meet the alpha mask (official ``filtering_rays``, ``bbox_only`` and mask branches).

Both take a split and flat pixel indices and return the kept indices, sorted. Rays are made on the
device from the split's cameras (:mod:`jax_tensorf.rays`, equal bit for bit to
``SplitData.rays``), in chunks sized from the device's free memory, one compilation per filter
call. The kept sets are those of the host versions they replace:

* :func:`filter_rays_by_box` is ``tensorf_common.bounds.ray_box_hit`` (float64 slab test, the ray
  meets the box in front of its origin) over every ray of the split;
* :func:`filter_rays_by_mask` is ``alpha_mask.rays_hit_mask`` (any of ``n_samples`` evaluation
  samples in the mask) over the rays of a pool. It marches the samples in ``phases`` runs: a ray
  that hit in one run is not marched further (a later sample could only confirm it), which spares
  the rest of the march of the rays that hit early. The arithmetic up to the mask lookup is held
  apart from the lookup's gather (XLA's CPU backend vectorises it then, and runs it several times
  faster).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tensorf_common.geometry import as_aabb

from . import alpha_mask as am
from . import ieee
from .rays import Cameras, cameras, rays_at, view_rays
from .sampling import sample_ray
from .xla import fixed_chunk, fusion_barrier

BOX_BYTES_PER_RAY = 512
"""Device bytes per ray of the box filter (rays in float32 and float64, the slab test's temporaries)."""
MASK_BYTES_PER_SAMPLE = 16
"""Device bytes per sample of the mask filter (the int32 lattice key held between the arithmetic
and the gather, and the fusions' temporaries)."""


def box_hit_f64(rays_o: jax.Array, rays_d: jax.Array, box64: jax.Array, nz: jax.Array) -> jax.Array:
    """``tensorf_common.bounds.ray_box_hit`` in float64, with numpy's NaN rules (``fmin``/``fmax``
    skip a NaN, ``max``/``maximum`` propagate it). ``nz``: ``ieee.neg_zero()``, traced. Traced
    inside ``ieee.x64()``."""
    nz64 = nz.astype(jnp.float64)
    o = rays_o.astype(jnp.float64)
    # numpy rounds 1 / d before the products; a non-constant numerator keeps the compiler from
    # folding the reciprocal into a division
    inv = (1.0 + nz64) / (rays_d.astype(jnp.float64) + nz64)
    t1 = (box64[0] - o) * inv
    t2 = (box64[1] - o) * inv
    tn = jnp.max(jnp.fmin(t1, t2), axis=-1)
    tf = jnp.min(jnp.fmax(t1, t2), axis=-1)
    return tf >= jnp.maximum(tn, 0.0)


@functools.partial(jax.jit, static_argnames=("n_views",))
def _box_views(cams: Cameras, first, box64, *, n_views: int):
    views = jnp.minimum(first + jnp.arange(n_views, dtype=jnp.int32), cams.rot.shape[0] - 1)
    o, d = view_rays(cams, views)
    return box_hit_f64(o, d, box64, cams.nz).reshape(n_views, -1)


def filter_rays_by_box(split, aabb, *, chunk: Optional[int] = None) -> np.ndarray:
    """Flat indices (sorted int64) of the rays of ``split`` that meet ``aabb`` in front of their
    origin: ``flatnonzero(ray_box_hit(*split.rays(arange(n_rays)), aabb))``, made on the device
    whole views at a time, as many as ``chunk`` rays hold (default: from the device's free
    memory; at least one view)."""
    n_views = max(1, fixed_chunk(split.n_rays, BOX_BYTES_PER_RAY, chunk) // split.n_pixels)
    n_views = min(n_views, split.n_views)
    cams = cameras(split)
    with ieee.x64():
        box64 = jnp.asarray(as_aabb(aabb).astype(np.float64))
        flags = [
            np.asarray(_box_views(cams, jnp.int32(v), box64, n_views=n_views))
            for v in range(0, split.n_views, n_views)
        ]
    return np.flatnonzero(np.concatenate(flags)[: split.n_views])


@functools.partial(jax.jit, static_argnames=("mask_shape", "near", "far", "n_samples", "run"))
def _mask_chunk(cams, idx, first, aabb, step, key_codes, mask_aabb, mask_size, *, mask_shape, near, far, n_samples,
                run):
    """Whether samples ``first .. first + run - 1`` (those below ``n_samples``) of each ray meet
    the mask: ``rays_hit_mask``'s arithmetic, held apart from the gather of the corner codes."""
    o, d = rays_at(cams, idx)
    _, xyz, _ = sample_ray(o, d, aabb, near, far, step, run, None, first=first)
    keys = fusion_barrier(am.mask_cell_keys(mask_shape, mask_aabb, xyz, mask_size))
    real = (first + jnp.arange(run, dtype=jnp.int32)) < n_samples
    return jnp.any(am.mask_key_hits(key_codes, keys) & real[None, :], axis=-1)


def filter_rays_by_mask(
    split,
    pool,
    aabb,
    step_size,
    mask,
    mask_aabb,
    near: float,
    far: float,
    n_samples: int = 256,
    *,
    phases: int = 2,
    chunk: Optional[int] = None,
    mask_size: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """The entries of ``pool`` (flat pixel indices of ``split``) whose rays have an evaluation
    sample in the alpha mask, sorted int64: ``pool[alpha_mask.rays_hit_mask(*split.rays(pool),
    aabb, near, far, step_size, mask, mask_aabb, n_samples)]``.

    ``aabb``, ``step_size``, ``mask`` (``(Z, Y, X)`` bool) and ``mask_aabb`` are the model's state;
    ``near``, ``far`` the dataset's. ``phases`` runs of ``ceil(n_samples / phases)`` samples each
    (see the module docstring); ``chunk`` rays per device call (default: from free memory);
    ``mask_size``: the active [X, Y, Z] of a mask in a larger all-False buffer (static-shape
    training), so that masks of any size share one compilation."""
    pool = np.asarray(pool, dtype=np.int64).reshape(-1)
    if pool.size > 1 and not bool(np.all(pool[1:] > pool[:-1])):
        pool = np.unique(pool)
    if pool.size and (pool[0] < 0 or pool[-1] >= split.n_rays):
        raise IndexError(f"{split.name}: flat pixel index out of range [0, {split.n_rays})")
    if phases < 1:
        raise ValueError(f"phases: must be >= 1, got {phases}")
    run = -(-int(n_samples) // int(phases))
    chunk = fixed_chunk(pool.size, run * MASK_BYTES_PER_SAMPLE, chunk)
    mask = jnp.asarray(mask, dtype=bool)
    fn = functools.partial(
        _mask_chunk, mask_shape=tuple(int(s) for s in mask.shape), near=float(near), far=float(far),
        n_samples=int(n_samples), run=run,
    )
    args = (
        jnp.asarray(aabb, jnp.float32),
        jnp.asarray(step_size, jnp.float32),
        am.mask_key_codes(mask),
        jnp.asarray(mask_aabb, jnp.float32),
        None if mask_size is None else jnp.asarray(np.asarray(mask_size, np.int32)),
    )
    cams = cameras(split)
    hit = np.zeros(pool.size, dtype=bool)
    todo = np.arange(pool.size)  # positions in pool of the rays not hit yet
    with ieee.x64():
        for first in range(0, int(n_samples), run):
            flags = []
            for start in range(0, todo.size, chunk):
                idx = pool[todo[start : start + chunk]].astype(np.int32)
                m = idx.size
                if m < chunk:
                    idx = np.concatenate([idx, np.full(chunk - m, idx[0], np.int32)])
                flags.append(np.asarray(fn(cams, idx, jnp.int32(first), *args))[:m])
            if not flags:
                break
            now = np.concatenate(flags)
            hit[todo[now]] = True
            todo = todo[~now]
    return pool[hit]


def filter_rays_by_model_mask(split, pool, model, n_samples: int = 256) -> np.ndarray:
    """:func:`filter_rays_by_mask` with a :class:`jax_tensorf.model.TensoRF`'s box, step, alpha mask
    and near/far (official ``filtering_rays``)."""
    s = model.state
    size = None if s.mask_size is None else np.asarray(s.mask_size)
    return filter_rays_by_mask(split, pool, s.aabb, s.step_size, s.mask, s.mask_aabb, model.near_far[0],
                               model.near_far[1], n_samples, mask_size=size)
