"""Volume rendering: alpha and weights, appearance selection, compositing, depth, and the whole
per-ray pipeline (official ``TensorBase.forward``).

Official facts reproduced here: the last interval is 0 (not 1e10), sample spacing is multiplied by
``distance_scale`` (25) before ``raw2alpha``, transmittance uses ``1 - alpha + 1e-10``, samples with
weight ``<= rayMarch_weight_thres`` (1e-4) get no appearance (rgb 0), the background is added as
``1 - acc`` when white (or with probability 1/2 in training on non-white datasets), then clamped.

Deliberate difference: depth is the expected distance ``sum(w * z)``; the official code adds
``(1 - acc) * rays[..., -1]`` (the direction's z component for 6-D rays, which looks like a bug).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from tensorf_common.config import ConfigError

from .alpha_mask import query_alpha_mask
from .sampling import normalize_coord, sample_ray, sample_ray_ndc

APPEARANCE_STRATEGIES = ("all", "threshold", "topk", "sample")


def raw2alpha(sigma: Tensor, dist: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Official ``raw2alpha``: sigma, dist (R, N) -> alpha (R, N), weights (R, N), T_last (R, 1).

    ``alpha = 1 - exp(-sigma * dist)``, ``T = cumprod([1, 1 - alpha + 1e-10])``, ``w = alpha * T[:, :-1]``.
    """
    alpha = 1.0 - torch.exp(-sigma * dist)
    ones = torch.ones(alpha.shape[0], 1, dtype=alpha.dtype, device=alpha.device)
    trans = torch.cumprod(torch.cat([ones, 1.0 - alpha + 1e-10], dim=-1), dim=-1)
    weights = alpha * trans[:, :-1]
    return alpha, weights, trans[:, -1:]


def sample_dists(z_vals: Tensor) -> Tensor:
    """Intervals between samples, the last one 0 (official)."""
    return torch.cat((z_vals[:, 1:] - z_vals[:, :-1], torch.zeros_like(z_vals[:, :1])), dim=-1)


def composite(
    weights: Tensor, rgb: Tensor, z_vals: Tensor, white_bg: bool, scale: Optional[Tensor] = None
) -> tuple[Tensor, Tensor, Tensor]:
    """rgb_map (R, 3) clamped to [0, 1] (plus ``1 - acc`` on white), depth_map (R,) = ``sum(w * z)``,
    acc_map (R,) = ``sum(w)``. ``scale`` (R,) optionally rescales the colour sum (``sample`` strategy)."""
    acc_map = weights.sum(-1)
    rgb_map = torch.sum(weights[..., None] * rgb, dim=-2)
    if scale is not None:
        rgb_map = rgb_map * scale[:, None]
    if white_bg:
        rgb_map = rgb_map + (1.0 - acc_map[..., None])
    rgb_map = rgb_map.clamp(0, 1)
    depth_map = torch.sum(weights * z_vals, dim=-1)
    return rgb_map, depth_map, acc_map


def median_depth(weights: Tensor, z_vals: Tensor, far: float) -> Tensor:
    """The first sample distance where the cumulative weight reaches 0.5, or ``far`` when it never does -> (R,)."""
    cum = torch.cumsum(weights, dim=-1)
    crossed = cum >= 0.5
    idx = torch.argmax(crossed.to(torch.int8), dim=-1)
    depth = torch.gather(z_vals, -1, idx[:, None])[:, 0]
    return torch.where(crossed.any(-1), depth, torch.full_like(depth, far))


def select_appearance(
    weights: Tensor,
    strategy: str = "threshold",
    thres: float = 1e-4,
    k: int = 32,
    gumbel: Optional[Tensor] = None,
    t_last: Optional[Tensor] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """Which samples get appearance -> (mask (R, N) bool, colour scale (R,) or None).

    - ``all``: every sample;
    - ``threshold``: ``weight > thres`` (official);
    - ``topk``: the k largest weights per ray;
    - ``sample``: k samples per ray drawn without replacement with probability proportional to the
      weight, as Gumbel top-k of ``log(w + 1e-20) + gumbel`` (``gumbel`` (R, N) standard Gumbel noise,
      drawn here if None), and the colour rescaled by ``(1 - T_last + 1e-8) / (sum w_selected + 1e-8)``
      without gradient (the seed's self-normalised correction; ``t_last`` (R,) or (R, 1) is needed).
    """
    if strategy == "all":
        return torch.ones_like(weights, dtype=torch.bool), None
    if strategy == "threshold":
        return weights > thres, None
    if strategy not in ("topk", "sample"):
        raise ConfigError(f"render.appearance: unknown strategy {strategy!r}; choose one of {APPEARANCE_STRATEGIES}")
    kk = min(int(k), weights.shape[-1])
    w = weights.detach()
    if strategy == "topk":
        keys = w
    else:
        if gumbel is None:
            u = torch.rand_like(w).clamp(1e-12, 1 - 1e-7)
            gumbel = -torch.log(-torch.log(u))
        keys = torch.log(w + 1e-20) + gumbel.to(w)
    idx = torch.topk(keys, kk, dim=-1).indices
    mask = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, idx, True)
    if strategy == "topk":
        return mask, None
    if t_last is None:
        raise ValueError("select_appearance: the 'sample' strategy needs t_last")
    selected = torch.where(mask, w, torch.zeros_like(w)).sum(-1)
    scale = (1.0 - t_last.detach().reshape(-1) + 1e-8) / (selected + 1e-8)
    return mask, scale


DensityFn = Callable[[Tensor], Tensor]
"""Normalised points (P, 3) -> sigma (P,)."""
AppearanceFn = Callable[[Tensor, Tensor], Tensor]
"""Normalised points (P, 3), view directions (P, 3) -> rgb (P, 3)."""


def render_rays(
    rays: Tensor,
    density_fn: DensityFn,
    appearance_fn: AppearanceFn,
    *,
    aabb,
    near: float,
    far: float,
    step_size: float,
    n_samples: int,
    distance_scale: float = 25.0,
    ray_march_weight_thres: float = 1e-4,
    white_bg: bool = True,
    is_train: bool = False,
    jitter: Optional[Tensor] = None,
    alpha_mask: Optional[Tensor] = None,
    mask_aabb=None,
    ndc_ray: bool = False,
    appearance: str = "threshold",
    topk: int = 32,
    app_gumbel: Optional[Tensor] = None,
    train_white_bg: Optional[bool] = None,
) -> dict[str, Tensor]:
    """Render rays (R, 6) = [origin, direction] with the official pipeline.

    ``jitter`` is one offset per ray in [0, 1) (R,) (or per sample index (N,) with ``ndc_ray``);
    in training (``is_train``) it is drawn with ``torch.rand`` when None. ``alpha_mask`` (Z, Y, X)
    with ``mask_aabb`` skips density outside the mask. ``train_white_bg`` fixes the official coin
    flip for the background of non-white datasets in training (drawn when None). ``appearance``,
    ``topk`` and ``app_gumbel`` choose the samples that get appearance (:func:`select_appearance`).

    Returns a dict: ``rgb_map`` (R, 3), ``depth_map`` (R,), ``acc_map`` (R,), ``weights`` (R, N),
    ``z_vals`` (R, N), ``n_density`` and ``n_appearance`` (sample counts, 0-dim).
    """
    rays_o, viewdirs = rays[:, :3], rays[:, 3:6]
    n_rays = rays.shape[0]
    if ndc_ray:
        if is_train and jitter is None:
            jitter = torch.rand(n_samples, dtype=rays.dtype, device=rays.device)
        z_vals, xyz, valid = sample_ray_ndc(rays_o, viewdirs, aabb, near, far, n_samples, jitter if is_train else None)
        norm = torch.norm(viewdirs, dim=-1, keepdim=True)
        dists = sample_dists(z_vals) * norm
        viewdirs = viewdirs / norm
    else:
        if is_train and jitter is None:
            jitter = torch.rand(n_rays, dtype=rays.dtype, device=rays.device)
        z_vals, xyz, valid = sample_ray(
            rays_o, viewdirs, aabb, near, far, step_size, n_samples, jitter if is_train else None
        )
        dists = sample_dists(z_vals)
    dirs = viewdirs.view(-1, 1, 3).expand(xyz.shape)

    if alpha_mask is not None:
        inside = torch.zeros_like(valid)
        inside[valid] = query_alpha_mask(alpha_mask, mask_aabb, xyz[valid])
        valid = valid & inside

    xyz_n = normalize_coord(xyz, aabb)
    sigma = torch.zeros(xyz.shape[:-1], dtype=xyz.dtype, device=xyz.device)
    if bool(valid.any()):
        sigma[valid] = density_fn(xyz_n[valid])

    _, weights, t_last = raw2alpha(sigma, dists * distance_scale)

    app_mask, scale = select_appearance(weights, appearance, ray_march_weight_thres, topk, app_gumbel, t_last)
    rgb = torch.zeros((*xyz.shape[:2], 3), dtype=xyz.dtype, device=xyz.device)
    if bool(app_mask.any()):
        rgb[app_mask] = appearance_fn(xyz_n[app_mask], dirs[app_mask])

    white = white_bg
    if not white_bg and is_train:
        white = bool(torch.rand(1) < 0.5) if train_white_bg is None else bool(train_white_bg)
    rgb_map, depth_map, acc_map = composite(weights, rgb, z_vals, white, scale)
    return {
        "rgb_map": rgb_map,
        "depth_map": depth_map,
        "acc_map": acc_map,
        "weights": weights,
        "z_vals": z_vals,
        "n_density": valid.sum(),
        "n_appearance": app_mask.sum(),
    }
