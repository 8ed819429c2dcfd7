"""jax_tensorf.ray_filter: the device box and mask filters keep exactly the rays that the host
versions they replace keep (``ray_box_hit`` over ``SplitData.rays``; ``alpha_mask.rays_hit_mask``
over them), whatever the chunk size and the number of phases."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_tensorf import alpha_mask as am
from jax_tensorf import ieee
from jax_tensorf.ray_filter import box_hit_f64, filter_rays_by_box, filter_rays_by_mask
from tensorf_common.bounds import carve_visual_hull, ray_box_hit
from tensorf_common.geometry import n_to_reso, step_size_and_n_samples

BOX = np.array([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]], np.float32)


def _host_box(split, aabb) -> np.ndarray:
    """The trainer's box filter before the device one (split.rays + ray_box_hit, on the host)."""
    keep = np.zeros(split.n_rays, dtype=bool)
    for start in range(0, split.n_rays, 1 << 15):
        idx = np.arange(start, min(start + (1 << 15), split.n_rays))
        keep[idx] = ray_box_hit(*split.rays(idx), aabb)
    return np.flatnonzero(keep)


@functools.partial(jax.jit, static_argnames=("near", "far", "n_samples"))
def _rays_hit_mask(o, d, aabb, step, mask, mask_aabb, *, near, far, n_samples):
    return am.rays_hit_mask(o, d, aabb, near, far, step, mask, mask_aabb, n_samples)


def _host_mask(split, pool, aabb, step, mask, mask_aabb, near, far, n_samples) -> np.ndarray:
    """The trainer's mask filter before the device one: host rays, the mask test per chunk."""
    o, d = split.rays(pool)
    hit = _rays_hit_mask(o, d, jnp.asarray(aabb), jnp.float32(step), jnp.asarray(mask), jnp.asarray(mask_aabb),
                         near=near, far=far, n_samples=n_samples)
    return pool[np.asarray(hit)]


def test_box_hit_keeps_numpys_nan_and_zero_rules():
    # zero direction components, origins on the faces (0 * inf = NaN in the slab test), behind
    o = np.array([[0, 0, -5], [1.5, 0, 0], [1.5, 1.5, -3], [-1.5, 2, 0], [0, 0, 3], [0, 0, 0], [2, 0, 0]], np.float32)
    d = np.array([[0, 0, 1], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1], [0, -0.0, 0], [-1, 0, 0]], np.float32)
    with ieee.x64():
        got = jax.jit(box_hit_f64)(o, d, BOX.astype(np.float64), ieee.neg_zero())
    np.testing.assert_array_equal(np.asarray(got), ray_box_hit(o, d, BOX))


@pytest.mark.parametrize("box", [BOX, [[-0.3, -0.2, -0.25], [0.35, 0.3, 0.2]], [[-0.9, -0.9, 0.1], [0.9, 0.9, 1.2]]])
def test_box_filter_equals_the_host_filter(small_dataset, lego_small, box):
    for split in (small_dataset["train"], lego_small["train"]):
        want = _host_box(split, np.asarray(box, np.float32))
        assert 0 < want.size < split.n_rays or np.array_equal(box, BOX)
        got = filter_rays_by_box(split, box)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)


def test_box_filter_does_not_depend_on_the_chunk(lego_small):
    split, box = lego_small["train"], [[-0.5, -0.6, -0.3], [0.5, 0.4, 0.6]]
    np.testing.assert_array_equal(filter_rays_by_box(split, box, chunk=1), filter_rays_by_box(split, box, chunk=1 << 30))


@pytest.fixture(scope="module")
def lego_mask_state(lego_small):
    """The cpu preset's state at start on lego_small: the carved hull as the mask over the dataset
    box, the tight box and the step of a 160^3 grid in it, and the box filter's pool."""
    split = lego_small["train"]
    occ, tight = carve_visual_hull(split, BOX, 48)
    reso = n_to_reso(160**3, tight)
    step, _ = step_size_and_n_samples(tight, reso, 0.5)
    mask = np.ascontiguousarray(occ.transpose(2, 1, 0))
    return split, tight, np.float32(step), mask, BOX, _host_box(split, tight)


@pytest.mark.parametrize("phases", [1, 2, 3])
def test_mask_filter_equals_the_host_filter(lego_mask_state, phases):
    split, aabb, step, mask, mask_aabb, pool = lego_mask_state
    want = _host_mask(split, pool, aabb, step, mask, mask_aabb, 2.0, 6.0, 256)
    assert 0.2 * pool.size < want.size < pool.size  # the mask drops rays and keeps rays
    got = filter_rays_by_mask(split, pool, aabb, step, mask, mask_aabb, 2.0, 6.0, 256, phases=phases)
    np.testing.assert_array_equal(got, want)


def test_mask_filter_does_not_depend_on_the_chunk(lego_mask_state):
    split, aabb, step, mask, mask_aabb, pool = lego_mask_state
    args = (split, pool[::20], aabb, step, mask, mask_aabb, 2.0, 6.0, 256)
    np.testing.assert_array_equal(filter_rays_by_mask(*args, chunk=7), filter_rays_by_mask(*args, chunk=1 << 20))


def test_mask_filter_on_a_sparse_random_mask_and_an_unsorted_pool(small_dataset):
    split = small_dataset["train"]
    rng = np.random.default_rng(3)
    mask = rng.random((9, 11, 13)) < 0.03  # (Z, Y, X), off-cube
    mask_aabb = np.array([[-1.2, -1.0, -0.9], [1.1, 1.3, 1.0]], np.float32)
    aabb = np.array([[-1.3, -1.2, -1.1], [1.2, 1.4, 1.2]], np.float32)
    pool = rng.permutation(split.n_rays)[: split.n_rays // 2]
    want = _host_mask(split, np.sort(pool), aabb, 0.013, mask, mask_aabb, 2.0, 6.0, 300)
    assert 0 < want.size < pool.size
    got = filter_rays_by_mask(split, pool, aabb, 0.013, mask, mask_aabb, 2.0, 6.0, 300, phases=4, chunk=100)
    np.testing.assert_array_equal(got, want)


def test_mask_filter_with_a_mask_in_a_larger_buffer(small_dataset):
    """Static-shape training keeps the mask in an all-False buffer with its active size traced."""
    from jax_tensorf.static_grid import pad_mask

    split = small_dataset["train"]
    rng = np.random.default_rng(4)
    mask = rng.random((9, 11, 13)) < 0.05  # (Z, Y, X)
    mask_aabb = np.array([[-1.2, -1.0, -0.9], [1.1, 1.3, 1.0]], np.float32)
    aabb = np.array([[-1.3, -1.2, -1.1], [1.2, 1.4, 1.2]], np.float32)
    pool = np.arange(split.n_rays)
    want = filter_rays_by_mask(split, pool, aabb, 0.013, mask, mask_aabb, 2.0, 6.0, 300)
    assert 0 < want.size < pool.size
    padded = np.asarray(pad_mask(mask, [17, 12, 10]))
    got = filter_rays_by_mask(split, pool, aabb, 0.013, padded, mask_aabb, 2.0, 6.0, 300, mask_size=[13, 11, 9])
    np.testing.assert_array_equal(got, want)
