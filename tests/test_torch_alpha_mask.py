"""torch_reference.alpha_mask: build and query (official z, y, x layout), empty masks, shrink, ray filtering."""

from __future__ import annotations

import pytest
import torch

from torch_reference.alpha_mask import (
    AlphaGridMask,
    alpha_from_sigma,
    build_alpha_mask,
    compute_dense_alpha,
    dense_grid_points,
    filter_rays,
    mask_bounds,
    query_alpha_mask,
    shrink_box,
)

BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def _slab_density(xyz: torch.Tensor) -> torch.Tensor:
    """Dense where |x| < 0.5 and |z| < 0.3 (any y), empty elsewhere (world points)."""
    inside = (xyz[:, 0].abs() < 0.5) & (xyz[:, 2].abs() < 0.3)
    return torch.where(inside, torch.tensor(100.0), torch.tensor(0.0))


def test_dense_grid_points_corner_to_corner():
    pts = dense_grid_points(torch.tensor([[-1.0, 0.0, 2.0], [1.0, 1.0, 4.0]]), [3, 2, 5])
    assert pts.shape == (3, 2, 5, 3)
    torch.testing.assert_close(pts[0, 0, 0], torch.tensor([-1.0, 0.0, 2.0]))
    torch.testing.assert_close(pts[-1, -1, -1], torch.tensor([1.0, 1.0, 4.0]))
    torch.testing.assert_close(pts[1, 0, 2], torch.tensor([0.0, 0.0, 3.0]))


def test_alpha_from_sigma_has_no_distance_scale():
    torch.testing.assert_close(alpha_from_sigma(torch.tensor([2.0]), 0.5), 1 - torch.exp(torch.tensor([-1.0])))


def test_mask_layout_is_zyx_as_grid_sample_expects():
    """The official check: density |x| < .5, |z| < .3 -> (0.45, 0, 0) is in the mask, (0, 0, 0.45) is not
    (a transposed volume would swap the two)."""
    grid = [41, 41, 41]
    alpha = compute_dense_alpha(_slab_density, BOX, grid, step=0.05)
    mask, new_aabb = build_alpha_mask(alpha, BOX, 1e-4)
    assert mask.shape == (41, 41, 41) and mask.dtype == torch.bool
    got = query_alpha_mask(mask, BOX, torch.tensor([[0.45, 0.0, 0.0], [0.0, 0.0, 0.45], [0.0, 0.9, 0.0]]))
    assert got.tolist() == [True, False, True]
    # the tight box: x to +-0.5 (0.45 dilated by one voxel), all of y, z within 0.3..0.35 after dilation
    torch.testing.assert_close(new_aabb[:, 0], torch.tensor([-0.5, 0.5]), atol=1e-6, rtol=0)
    torch.testing.assert_close(new_aabb[:, 1], torch.tensor([-1.0, 1.0]), atol=1e-6, rtol=0)
    assert 0.3 - 1e-6 <= float(new_aabb[1, 2]) <= 0.35 + 1e-6 and torch.isclose(new_aabb[0, 2], -new_aabb[1, 2])


def test_dilation_by_one_voxel_and_threshold():
    alpha = torch.zeros(5, 5, 5)
    alpha[2, 2, 2] = 0.5  # (x, y, z) = (2, 2, 2)
    alpha[0, 4, 1] = 1e-5  # below the threshold
    mask, box = build_alpha_mask(alpha, BOX, 1e-4)
    assert int(mask.sum()) == 27 and bool(mask[1:4, 1:4, 1:4].all())
    torch.testing.assert_close(box, torch.tensor([[-0.5] * 3, [0.5] * 3]))
    # (z, y, x) storage: one voxel at x index 4 only
    a2 = torch.zeros(5, 5, 5)
    a2[4, 0, 0] = 1.0
    m2, _ = build_alpha_mask(a2, BOX, 1e-4)
    assert bool(m2[0, 0, 4]) and not bool(m2[4, 0, 0])


def test_empty_mask_gives_none_instead_of_crashing():
    mask, box = build_alpha_mask(torch.zeros(4, 5, 6), BOX, 1e-4)
    assert box is None and mask.shape == (6, 5, 4) and not bool(mask.any())
    assert mask_bounds(mask, BOX) is None


def test_query_outside_mask_box_is_false_and_trilinear_reach():
    mask = torch.zeros(3, 3, 3, dtype=torch.bool)
    mask[1, 1, 1] = True  # centre voxel
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.99, 0.0, 0.0], [0.5, 0.5, 0.5], [1.5, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # anything strictly within one voxel of the centre has a non-zero trilinear weight
    assert query_alpha_mask(mask, BOX, pts).tolist() == [True, True, True, False, False]


def test_alpha_grid_mask_object():
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[1, 2, 3] = True
    m = AlphaGridMask(BOX, mask.float())
    assert m.gridSize == [4, 3, 2] and m.alpha_volume.shape == (1, 1, 2, 3, 4)
    assert m.contains(torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])).tolist() == [True, False]
    assert m.sample_alpha(torch.tensor([[1.0, 1.0, 1.0]])).tolist() == [1.0]


def test_shrink_box_official_formula_same_and_other_mask_resolution():
    grid = [11, 11, 11]  # units 0.2
    new = torch.tensor([[-0.62, -0.28, 0.14], [0.66, 0.94, 1.0]])
    t_l, b_r, box, size = shrink_box(BOX, grid, new, mask_grid_size=grid)
    # t_l = round((min + 1) / 0.2) = round([1.9, 3.6, 5.7]); b_r = min(round((max + 1) / 0.2) + 1, 11)
    assert t_l == [2, 4, 6] and b_r == [9, 11, 11] and size == [7, 7, 5]
    torch.testing.assert_close(box, new)  # same resolution: the mask's box is kept
    t_l2, b_r2, box2, size2 = shrink_box(BOX, grid, new, mask_grid_size=[21, 21, 21])
    assert (t_l2, b_r2, size2) == (t_l, b_r, size)
    # other resolution: snapped to the kept grid points aabb0 + size * [t_l, b_r - 1] / (G - 1)
    torch.testing.assert_close(box2, torch.tensor([[-0.6, -0.2, 0.2], [0.6, 1.0, 1.0]]), atol=1e-6, rtol=0)


def test_filter_rays_bbox_and_mask():
    o = torch.tensor([[-3.0, 0.0, 0.0], [-3.0, 2.0, 0.0], [-3.0, 0.0, 0.9]])
    d = torch.tensor([[1.0, 0.0, 0.0]] * 3)
    assert filter_rays(o, d, BOX).tolist() == [True, False, True]
    alpha = compute_dense_alpha(_slab_density, BOX, [21, 21, 21], step=0.1)
    mask, _ = build_alpha_mask(alpha, BOX, 1e-4)
    keep = filter_rays(o, d, BOX, near=0.1, far=6.0, step_size=0.05, mask=mask, mask_aabb=BOX, chunk=2)
    assert keep.tolist() == [True, False, False]


def test_compute_dense_alpha_respects_the_current_mask():
    calls = []

    def density(x):
        calls.append(x.shape[0])
        return torch.full((x.shape[0],), 50.0)

    alpha = compute_dense_alpha(density, BOX, [3, 3, 3], 0.1, mask_fn=lambda x: x[:, 0] > 0)
    assert bool((alpha[2] > 0.99).all()) and bool((alpha[:2] == 0).all())
    assert sum(calls) == 9  # only the points inside the mask were evaluated


@pytest.mark.parametrize("thres", [1e-4, 0.5])
def test_threshold_is_inclusive(thres):
    alpha = torch.zeros(3, 3, 3)
    alpha[1, 1, 1] = thres
    mask, _ = build_alpha_mask(alpha, BOX, thres)
    assert bool(mask[1, 1, 1])
