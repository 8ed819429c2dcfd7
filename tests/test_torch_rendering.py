"""torch_reference.rendering: raw2alpha, compositing, depth, appearance selection, the pipeline."""

from __future__ import annotations

import math

import pytest
import torch

from tensorf_common.config import ConfigError
from torch_reference.rendering import composite, median_depth, raw2alpha, render_rays, sample_dists, select_appearance


def test_sample_dists_last_is_zero():
    z = torch.tensor([[1.0, 1.5, 2.5]])
    torch.testing.assert_close(sample_dists(z), torch.tensor([[0.5, 1.0, 0.0]]))


def test_raw2alpha_by_hand():
    sigma = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    dist = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    alpha, w, t_last = raw2alpha(sigma, dist)
    a0, a1 = 1 - math.exp(-0.5), 1 - math.exp(-1.0)
    torch.testing.assert_close(alpha, torch.tensor([[a0, a1, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(w, torch.tensor([[a0, a1 * (1 - a0 + 1e-10), 0.0]], dtype=torch.float64))
    assert t_last.shape == (1, 1)  # official T[:, -1:]
    torch.testing.assert_close(
        t_last[0, 0], torch.tensor((1 - a0 + 1e-10) * (1 - a1 + 1e-10) * (1 + 1e-10), dtype=torch.float64)
    )


def test_raw2alpha_transmittance_floor_1e10():
    # an opaque first sample leaves transmittance 1e-10 (not 0) for the next one
    alpha, w, _ = raw2alpha(torch.tensor([[math.inf, 1.0]], dtype=torch.float64), torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    assert float(alpha[0, 0]) == 1.0
    torch.testing.assert_close(w[0, 1], torch.tensor((1 - math.exp(-1.0)) * 1e-10, dtype=torch.float64))


def test_composite_white_background_clamp_and_depth():
    w = torch.tensor([[0.2, 0.3, 0.0], [0.0, 0.0, 0.0]])
    rgb = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [9.0, 9.0, 9.0]], [[0.3, 0.3, 0.3]] * 3])
    z = torch.tensor([[2.0, 3.0, 4.0], [2.0, 3.0, 4.0]])
    rgb_map, depth, acc = composite(w, rgb, z, white_bg=True)
    torch.testing.assert_close(acc, torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(rgb_map[0], torch.tensor([0.2 + 0.5, 0.3 + 0.5, 0.25 + 0.5]))
    torch.testing.assert_close(rgb_map[1], torch.ones(3))  # empty ray: white
    torch.testing.assert_close(depth, torch.tensor([0.2 * 2 + 0.3 * 3, 0.0]))  # no (1-acc) * d_z term
    black, _, _ = composite(w, rgb, z, white_bg=False)
    torch.testing.assert_close(black[1], torch.zeros(3))
    over, _, _ = composite(torch.tensor([[0.9, 0.9, 0.0]]), torch.ones(1, 3, 3), z[:1], white_bg=False)
    torch.testing.assert_close(over[0], torch.ones(3))  # clamped from 1.8


def test_median_depth():
    w = torch.tensor([[0.1, 0.3, 0.4, 0.1], [0.1, 0.1, 0.1, 0.1]])
    z = torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 2)
    torch.testing.assert_close(median_depth(w, z, far=6.0), torch.tensor([3.0, 6.0]))


def test_select_appearance_strategies():
    w = torch.tensor([[0.5, 1e-5, 0.2, 0.0], [1e-3, 2e-4, 0.0, 0.0]])
    m, s = select_appearance(w, "threshold", 1e-4)
    assert s is None and m.tolist() == [[True, False, True, False], [True, True, False, False]]
    assert bool(select_appearance(w, "all")[0].all())
    m, _ = select_appearance(w, "topk", k=1)
    assert m.tolist() == [[True, False, False, False], [True, False, False, False]]
    # sample: with zero Gumbel noise this is top-k of log(w); the colour is rescaled to the opacity
    _, _, t_last = raw2alpha(torch.tensor([[0.7, 0.2, 0.3, 0.0]]), torch.ones(1, 4))
    ww = raw2alpha(torch.tensor([[0.7, 0.2, 0.3, 0.0]]), torch.ones(1, 4))[1]
    m, scale = select_appearance(ww, "sample", k=2, gumbel=torch.zeros(1, 4), t_last=t_last)
    assert m.tolist() == [[True, False, True, False]]
    sel = ww[0, 0] + ww[0, 2]
    torch.testing.assert_close(scale, ((1 - t_last[:, 0] + 1e-8) / (sel + 1e-8)))
    with pytest.raises(ConfigError, match="appearance"):
        select_appearance(w, "best")


def _box_density(xyz_n: torch.Tensor) -> torch.Tensor:
    return torch.where(xyz_n.abs().amax(-1) < 0.5, torch.tensor(20.0), torch.tensor(0.0))


def test_render_rays_pipeline_white_and_black_backgrounds():
    o = torch.tensor([[-3.0, 0.0, 0.0], [-3.0, 0.9, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    rays = torch.cat([o, d], -1)
    red = lambda x, v: torch.tensor([1.0, 0.0, 0.0]).expand(x.shape[0], 3)  # noqa: E731
    kw = dict(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), near=0.1, far=6.0, step_size=0.05, n_samples=80)
    out = render_rays(rays, _box_density, red, white_bg=True, **kw)
    # ray 0 crosses the dense cube |x_n| < 0.5 and turns red; ray 1 misses it and stays white
    torch.testing.assert_close(out["rgb_map"][0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(out["rgb_map"][1], torch.ones(3))
    assert 2.4 < float(out["depth_map"][0]) < 2.6  # the cube face at x = -0.5, distance 2.5
    black = render_rays(rays, _box_density, red, white_bg=False, **kw)
    torch.testing.assert_close(black["rgb_map"][1], torch.zeros(3))
    # an all-empty alpha mask skips every density lookup
    empty = render_rays(rays, _box_density, red, white_bg=True, alpha_mask=torch.zeros(2, 2, 2, dtype=torch.bool), mask_aabb=kw["aabb"], **kw)
    assert int(empty["n_density"]) == 0
    torch.testing.assert_close(empty["rgb_map"], torch.ones(2, 3))


def test_render_rays_jitter_and_train_background_coin():
    o = torch.tensor([[-3.0, 0.9, 0.0]])
    rays = torch.cat([o, torch.tensor([[1.0, 0.0, 0.0]])], -1)
    kw = dict(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), near=0.1, far=6.0, step_size=0.1, n_samples=10)
    app = lambda x, v: torch.zeros(x.shape[0], 3)  # noqa: E731
    a = render_rays(rays, _box_density, app, white_bg=False, is_train=True, jitter=torch.tensor([0.5]), train_white_bg=True, **kw)
    torch.testing.assert_close(a["z_vals"][0, 0], torch.tensor(2.05))
    torch.testing.assert_close(a["rgb_map"], torch.ones(1, 3))
    b = render_rays(rays, _box_density, app, white_bg=False, is_train=True, jitter=torch.tensor([0.5]), train_white_bg=False, **kw)
    torch.testing.assert_close(b["rgb_map"], torch.zeros(1, 3))
