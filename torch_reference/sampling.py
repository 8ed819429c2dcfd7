"""Sample points along rays (official ``TensorBase.sample_ray`` / ``sample_ray_ndc``).

Samples are uniform steps of ``step_size`` from the ray's AABB entry point (clamped to [near, far]);
there is no far cut-off: samples past the box are flagged by ``in_box``. Training draws ONE jitter
per ray (all samples of a ray shift together); here the jitter is an explicit argument so that both
frameworks can be fed the same numbers. Step size and sample counts come from
``tensorf_common.geometry`` (``step_size_and_n_samples``, ``train_n_samples``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _as_aabb(aabb, like: Tensor) -> Tensor:
    return torch.as_tensor(aabb, dtype=like.dtype, device=like.device).reshape(2, 3)


def _slab_rates(rays_o: Tensor, rays_d: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor]:
    """Distances to the two slab planes per axis; zero directions become 1e-6 (official)."""
    vec = torch.where(rays_d == 0, torch.full_like(rays_d, 1e-6), rays_d)
    rate_a = (aabb[1] - rays_o) / vec
    rate_b = (aabb[0] - rays_o) / vec
    return rate_a, rate_b


def ray_aabb_tmin(rays_o: Tensor, rays_d: Tensor, aabb, near: float, far: float) -> Tensor:
    """Entry distance of each ray (R,) into the box, clamped to [near, far] (official ``t_min``)."""
    box = _as_aabb(aabb, rays_o)
    rate_a, rate_b = _slab_rates(rays_o, rays_d, box)
    return torch.minimum(rate_a, rate_b).amax(-1).clamp(min=near, max=far)


def ray_aabb_hit(rays_o: Tensor, rays_d: Tensor, aabb) -> Tensor:
    """Whether each ray's line crosses the box, ``t_max > t_min`` unclamped (official ``bbox_only`` filter)."""
    box = _as_aabb(aabb, rays_o)
    rate_a, rate_b = _slab_rates(rays_o, rays_d, box)
    t_min = torch.minimum(rate_a, rate_b).amax(-1)
    t_max = torch.maximum(rate_a, rate_b).amin(-1)
    return t_max > t_min


def in_aabb(xyz: Tensor, aabb) -> Tensor:
    """Points inside the closed box (official ``~mask_outbbox``) -> bool (...)."""
    box = _as_aabb(aabb, xyz)
    return ~((box[0] > xyz) | (xyz > box[1])).any(dim=-1)


def sample_ray(
    rays_o: Tensor,
    rays_d: Tensor,
    aabb,
    near: float,
    far: float,
    step_size: float,
    n_samples: int,
    jitter: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Uniform samples from the box entry point.

    Args:
        rays_o, rays_d: (R, 3) origins and directions.
        aabb: (2, 3) box.
        near, far: clamp of the entry distance.
        step_size: spacing along the ray (``geometry.step_size_and_n_samples``).
        n_samples: N.
        jitter: (R,) in [0, 1), one offset per ray (training), or None (evaluation).

    Returns:
        z_vals (R, N), xyz (R, N, 3), in_box (R, N) bool.
    """
    t_min = ray_aabb_tmin(rays_o, rays_d, aabb, near, far)
    rng = torch.arange(n_samples, dtype=rays_o.dtype, device=rays_o.device)[None]
    if jitter is not None:
        rng = rng.repeat(rays_d.shape[0], 1) + jitter.to(rays_o).reshape(-1, 1)
    z_vals = t_min[:, None] + step_size * rng
    if jitter is None:
        z_vals = z_vals.expand(rays_o.shape[0], n_samples)
    xyz = rays_o[:, None, :] + rays_d[:, None, :] * z_vals[..., None]
    return z_vals, xyz, in_aabb(xyz, aabb)


def sample_ray_ndc(
    rays_o: Tensor,
    rays_d: Tensor,
    aabb,
    near: float,
    far: float,
    n_samples: int,
    jitter: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """NDC sampling (official ``sample_ray_ndc``): ``linspace(near, far, N)`` plus, in training,
    ``jitter * (far - near) / N`` where ``jitter`` (N,) is ONE offset per sample index shared by all
    rays (the official ``rand_like`` of a (1, N) tensor). Returns z_vals (R, N), xyz, in_box."""
    z = torch.linspace(near, far, n_samples, dtype=rays_o.dtype, device=rays_o.device)[None]
    if jitter is not None:
        z = z + jitter.to(rays_o).reshape(1, -1) * ((far - near) / n_samples)
    z_vals = z.expand(rays_o.shape[0], n_samples)
    xyz = rays_o[:, None, :] + rays_d[:, None, :] * z_vals[..., None]
    return z_vals, xyz, in_aabb(xyz, aabb)


def normalize_coord(xyz: Tensor, aabb) -> Tensor:
    """World points to [-1, 1] over the box: ``(xyz - aabb[0]) * (2 / (aabb[1] - aabb[0])) - 1`` (official)."""
    box = _as_aabb(aabb, xyz)
    inv = 2.0 / (box[1] - box[0])
    return (xyz - box[0]) * inv - 1
