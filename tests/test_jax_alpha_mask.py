"""jax_tensorf.alpha_mask: the official (Z, Y, X) layout check, empty masks, dilation as a 3x3x3
max-pool, the trilinear '> 0' query, mask bounds, the shrink arithmetic and ray filtering."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from jax_tensorf.alpha_mask import (
    alpha_from_sigma,
    build_alpha_mask,
    compute_dense_alpha,
    dense_grid_points,
    dilate_and_threshold,
    full_mask,
    mask_bounds,
    query_alpha_mask,
    rays_hit_mask,
    shrink_box,
)

BOX = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]], np.float32)


def _slab_density(xyz):
    """Dense where |x| < 0.5 and |z| < 0.3 (any y), empty elsewhere (world points)."""
    inside = (jnp.abs(xyz[..., 0]) < 0.5) & (jnp.abs(xyz[..., 2]) < 0.3)
    return jnp.where(inside, 100.0, 0.0)


def test_dense_grid_points_corner_to_corner():
    pts = np.asarray(dense_grid_points(np.array([[-1.0, 0.0, 2.0], [1.0, 1.0, 4.0]], np.float32), [3, 2, 5]))
    assert pts.shape == (3, 2, 5, 3)
    np.testing.assert_allclose(pts[0, 0, 0], [-1, 0, 2])
    np.testing.assert_allclose(pts[-1, -1, -1], [1, 1, 4])
    np.testing.assert_allclose(pts[1, 0, 2], [0, 0, 3])


def test_alpha_from_sigma_has_no_distance_scale():
    np.testing.assert_allclose(np.asarray(alpha_from_sigma(jnp.array([2.0, 0.0]), 0.5)), [1 - np.exp(-1.0), 0.0], rtol=1e-6)


def test_official_layout_check_zyx():
    """The official check (issue #74 was wrong): density |x| < .5, |z| < .3 -> (0.45, 0, 0) is in the
    mask, (0, 0, 0.45) is not. A transposed volume would swap the two. Non-cubic grid on purpose."""
    grid = [41, 33, 37]  # X, Y, Z
    alpha = compute_dense_alpha(_slab_density, BOX, grid, step=0.05)
    assert alpha.shape == (41, 33, 37)
    mask, new_aabb = build_alpha_mask(alpha, BOX, 1e-4)
    assert mask.shape == (37, 33, 41) and mask.dtype == jnp.bool_  # (Z, Y, X)
    pts = jnp.asarray(np.array([[0.45, 0.0, 0.0], [0.0, 0.0, 0.45], [0.0, 0.9, 0.0], [0.0, 0.0, -0.45], [-0.7, 0.0, 0.0]], np.float32))
    assert np.asarray(query_alpha_mask(mask, jnp.asarray(BOX), pts)).tolist() == [True, False, True, False, False]
    # the tight box: x to about +-0.5 and z to about +-0.3 (one dilated voxel beyond), all of y
    new_aabb = np.asarray(new_aabb)
    np.testing.assert_allclose(new_aabb[:, 1], [-1.0, 1.0], atol=1e-6)
    assert 0.45 <= new_aabb[1, 0] <= 0.56 and np.isclose(new_aabb[0, 0], -new_aabb[1, 0], atol=1e-6)
    assert 0.3 <= new_aabb[1, 2] <= 0.39 and np.isclose(new_aabb[0, 2], -new_aabb[1, 2], atol=1e-6)


def test_empty_mask_returns_none_without_crashing():
    mask, box = build_alpha_mask(jnp.zeros((4, 5, 6)), BOX, 1e-4)
    assert box is None
    assert mask.shape == (6, 5, 4) and not bool(np.asarray(mask).any())
    assert mask_bounds(mask, BOX) is None


def test_dilate_and_threshold_is_a_3x3x3_max_pool():
    rng = np.random.default_rng(0)
    alpha = (rng.random((9, 7, 8)) ** 8).astype(np.float32)  # mostly tiny, a few large
    alpha[0, 0, 0] = 1e-4  # exactly the threshold counts (>=)
    alpha[4, 3, 2] = 2.0  # clamped to 1 first: no effect on a >= test
    thres = 0.3
    got = np.asarray(dilate_and_threshold(jnp.asarray(alpha), thres))
    want = ndimage.maximum_filter(alpha, size=3, mode="constant", cval=-np.inf) >= thres
    assert got.shape == (8, 7, 9)
    np.testing.assert_array_equal(got, np.transpose(want, (2, 1, 0)))
    assert 0 < got.sum() < got.size
    at_thres = np.zeros((3, 3, 3), np.float32)
    at_thres[0, 0, 0] = 1e-4
    assert np.asarray(dilate_and_threshold(jnp.asarray(at_thres), 1e-4))[1, 1, 1]  # dilated from the corner
    single = np.zeros((5, 5, 5), np.float32)
    single[4, 0, 2] = 0.5  # (x, y, z) = (4, 0, 2)
    m = np.asarray(dilate_and_threshold(jnp.asarray(single), 1e-4))
    assert m.sum() == 2 * 2 * 3  # clipped at the x and y edges
    assert m[1:4, 0:2, 3:5].all()  # (z, y, x) indexing


def test_query_is_trilinear_greater_than_zero():
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = True  # centre voxel of a box [-1, 1]: grid points at -1, 0, 1
    pts = np.array(
        [[0, 0, 0], [0.99, 0, 0], [0.5, -0.5, 0.99], [1.0, 0, 0], [0, -1.0, 0], [1.5, 0, 0], [0.2, 0.2, 1.01]],
        np.float32,
    )
    got = np.asarray(query_alpha_mask(jnp.asarray(mask), jnp.asarray(BOX), jnp.asarray(pts)))
    # within one voxel of the centre: non-zero weight; on a neighbouring grid point or outside: zero
    assert got.tolist() == [True, True, True, False, False, False, False]
    # against a float trilinear interpolation of the volume, on random points
    rng = np.random.default_rng(1)
    vol = rng.random((4, 5, 6)) < 0.15  # (Z, Y, X)
    p = rng.uniform(-1.2, 1.2, size=(500, 3)).astype(np.float32)
    idx = (p + 1) / 2 * (np.array([6, 5, 4]) - 1)  # x, y, z continuous indices
    val = ndimage.map_coordinates(vol.astype(np.float64), idx[:, ::-1].T, order=1, mode="constant", cval=0.0)
    got = np.asarray(query_alpha_mask(jnp.asarray(vol), jnp.asarray(BOX), jnp.asarray(p)))
    inside = np.all(np.abs(p) <= 1, axis=1)
    np.testing.assert_array_equal(got[inside], val[inside] > 1e-9)
    assert not got[~inside & np.any(np.abs(p) > 1.2 - 1e-6, axis=1)].any()


def test_full_mask_passes_every_point_in_the_box():
    mask, aabb = full_mask(BOX)
    pts = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, size=(200, 3)).astype(np.float32))
    assert bool(np.asarray(query_alpha_mask(mask, aabb, pts)).all())


def test_mask_bounds_arithmetic():
    aabb = np.array([[-1.0, -2.0, 0.0], [1.0, 2.0, 1.0]], np.float32)
    mask = np.zeros((5, 9, 11), bool)  # Z=5, Y=9, X=11
    mask[1:4, 2:7, 3:9] = True
    got = mask_bounds(mask, aabb)
    # x: 3/10 .. 8/10 of [-1, 1]; y: 2/8 .. 6/8 of [-2, 2]; z: 1/4 .. 3/4 of [0, 1]
    np.testing.assert_allclose(got, [[-0.4, -1.0, 0.25], [0.6, 1.0, 0.75]], atol=1e-6)


def test_shrink_box_rounding_and_snap():
    aabb = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]], np.float32)
    grid = [21, 21, 21]  # units 0.1
    new = np.array([[-0.52, -0.3, 0.07], [0.46, 0.81, 0.5]], np.float32)
    # t_l = round([4.8, 7.0, 10.7]) = [5, 7, 11]; b_r = round([14.6, 18.1, 15.0]) + 1 = [16, 19, 16]
    t_l, b_r, aabb_after, grid_after = shrink_box(aabb, grid, new, grid)
    assert t_l == [5, 7, 11] and b_r == [16, 19, 16] and grid_after == [11, 12, 5]
    np.testing.assert_array_equal(np.asarray(aabb_after), new)  # same resolution: the mask's box is kept
    # a mask at another resolution: the box snaps to the grid points t_l and b_r - 1
    t_l2, b_r2, snapped, grid2 = shrink_box(aabb, grid, new, [11, 11, 11])
    assert (t_l2, b_r2, grid2) == (t_l, b_r, grid_after)
    np.testing.assert_allclose(snapped, [[-0.5, -0.3, 0.1], [0.5, 0.8, 0.5]], atol=1e-6)
    # beyond the box: clipped to the grid
    t_l3, b_r3, _, grid3 = shrink_box(aabb, grid, np.array([[-1.3, -1.0, -1.0], [1.4, 1.0, 0.0]], np.float32), grid)
    assert t_l3 == [0, 0, 0] and b_r3 == [21, 21, 11] and grid3 == [21, 21, 11]


def test_shrink_box_non_cubic():
    aabb = np.array([[-1.0, -2.0, 0.0], [1.0, 2.0, 1.0]], np.float32)
    grid = [11, 21, 6]  # units 0.2 on every axis
    t_l, b_r, _, g = shrink_box(aabb, grid, np.array([[-0.5, -1.1, 0.3], [0.3, 1.5, 0.9]], np.float32), [5, 5, 5])
    # (new - aabb0) / 0.2 in float32 = [2.5, 4.5, 1.5] -> [2, 4, 2] (round half to even, like torch.round);
    # [6.4999995, 17.5, 4.5] -> [6, 18, 4], + 1
    assert t_l == [2, 4, 2] and b_r == [7, 19, 5] and g == [5, 15, 3]


def test_rays_hit_mask():
    mask = np.zeros((11, 11, 11), bool)
    mask[4:7, 4:7, 4:7] = True  # a small cube around the centre
    o = np.array([[-3, 0, 0], [-3, 0.9, 0.9], [0, -3, 0.05], [0, 0, -3]], np.float32)
    d = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0.6, 0.8]], np.float32)
    got = rays_hit_mask(jnp.asarray(o), jnp.asarray(d), jnp.asarray(BOX), 0.5, 6.0, 0.02, jnp.asarray(mask), jnp.asarray(BOX), 400)
    assert np.asarray(got).tolist() == [True, False, True, False]


def test_cell_keys_and_key_hits_are_the_query():
    # points on lattice planes and edges (where far corners weigh nothing), near and outside the
    # lattice, and random ones: the split query answers as query_alpha_mask
    from jax_tensorf.alpha_mask import mask_cell_keys, mask_key_codes, mask_key_hits

    rng = np.random.default_rng(0)
    mask = rng.random((5, 6, 7)) < 0.2  # (Z, Y, X)
    box = np.array([[-1.0, -0.5, 0.0], [1.0, 0.7, 2.0]], np.float32)
    sizes = np.array([7, 6, 5])
    lattice = rng.integers(-1, sizes + 1, (3000, 3)).astype(np.float32)
    lattice[1000:2000, 0] += rng.random(1000).astype(np.float32)  # on y and z planes only
    lattice[2000:, :] += rng.random((1000, 3)).astype(np.float32)
    pts = box[0] + lattice / (sizes - 1) * (box[1] - box[0])
    pts = np.concatenate([pts, rng.uniform(-1.5, 2.5, (3000, 3)).astype(np.float32)])
    want = np.asarray(query_alpha_mask(jnp.asarray(mask), jnp.asarray(box), jnp.asarray(pts)))
    keys = mask_cell_keys(mask.shape, jnp.asarray(box), jnp.asarray(pts))
    got = np.asarray(mask_key_hits(mask_key_codes(jnp.asarray(mask)), keys))
    assert 0.05 < want.mean() < 0.95
    np.testing.assert_array_equal(got, want)
