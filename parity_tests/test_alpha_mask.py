"""alpha_mask: dense grid, alpha, mask build (dilation, threshold, box), mask query, the shrink
arithmetic, the dense alpha of a model and ray filtering, JAX vs torch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_tensorf.alpha_mask as ja
import torch_reference.alpha_mask as ta
from compare import EXACT, assert_close
from jax_tensorf.model import density_at

MASK_GRID = (14, 10, 8)  # [X, Y, Z]


def _alpha_xyz(grid=MASK_GRID, seed=0):
    """A smooth alpha field (X, Y, Z) with values on both sides of the thresholds."""
    axes = [np.linspace(-1, 1, n) for n in grid]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    a = np.exp(-((x - 0.2) ** 2 / 0.2 + (y + 0.1) ** 2 / 0.15 + z**2 / 0.3)) * 0.05
    a += np.random.default_rng(seed).uniform(0, 2e-5, a.shape)
    return a.astype(np.float32)


def test_dense_grid_points(twins):
    got = ja.dense_grid_points(jnp.asarray(twins.AABB), MASK_GRID)
    want = ta.dense_grid_points(twins.AABB, MASK_GRID)
    assert_close("alpha_mask.dense_grid_points", got, want)


def test_alpha_from_sigma():
    sigma = np.random.default_rng(1).gamma(0.5, 3.0, 5000).astype(np.float32)
    got = jax.jit(ja.alpha_from_sigma)(jnp.asarray(sigma), jnp.float32(0.037))
    assert_close("alpha_mask.alpha_from_sigma", got, ta.alpha_from_sigma(torch.from_numpy(sigma), 0.037))


@pytest.mark.parametrize("thres", [1e-4, 1e-3, 0.02])
def test_build_alpha_mask(twins, thres):
    alpha = _alpha_xyz()
    mask_j, box_j = ja.build_alpha_mask(jnp.asarray(alpha), twins.AABB, thres)
    mask_t, box_t = ta.build_alpha_mask(torch.from_numpy(alpha), twins.AABB, thres)
    assert 0 < int(mask_t.sum()) < mask_t.numel()
    assert_close(f"alpha_mask.build_alpha_mask[{thres:g}].mask", mask_j, mask_t, EXACT)
    assert_close(f"alpha_mask.build_alpha_mask[{thres:g}].aabb", box_j, box_t)


def test_build_alpha_mask_empty(twins):
    alpha = np.zeros(MASK_GRID, np.float32)
    mask_j, box_j = ja.build_alpha_mask(jnp.asarray(alpha), twins.AABB, 1e-4)
    mask_t, box_t = ta.build_alpha_mask(torch.from_numpy(alpha), twins.AABB, 1e-4)
    assert box_j is None and box_t is None
    assert_close("alpha_mask.build_alpha_mask[empty].mask", mask_j, mask_t, EXACT)


@pytest.mark.parametrize("where", ["random", "outside", "grid_points"])
def test_query_alpha_mask(twins, where):
    mask, _ = ta.build_alpha_mask(torch.from_numpy(_alpha_xyz()), twins.AABB, 1e-3)
    box = twins.AABB + np.array([[-0.05], [0.07]], np.float32)  # the mask box differs from the query box
    if where == "random":
        xyz = twins.to_world(twins.points(4000, seed=2))
    elif where == "outside":
        xyz = twins.to_world(twins.points(2000, seed=3, lo=-1.4, hi=1.4))
    else:  # the dense grid of another resolution over the model box, as a later mask update queries it
        xyz = ta.dense_grid_points(twins.AABB, (17, 13, 11)).reshape(-1, 3).numpy()
    got = jax.jit(ja.query_alpha_mask)(jnp.asarray(mask.numpy()), jnp.asarray(box), jnp.asarray(xyz))
    want = ta.query_alpha_mask(mask, box, torch.from_numpy(xyz))
    assert 0 < int(want.sum()) < want.numel()
    assert_close(f"alpha_mask.query_alpha_mask[{where}]", got, want, EXACT)


@pytest.mark.parametrize("mask_grid", [(13, 11, 9), (26, 22, 18)], ids=["same_grid", "finer_mask"])
def test_shrink_box(twins, mask_grid):
    new_aabb = np.array([[-0.71, -0.43, -0.52], [0.66, 0.38, 0.47]], np.float32)
    t_l_j, b_r_j, box_j, grid_j = ja.shrink_box(twins.AABB, twins.GRID, new_aabb, mask_grid)
    t_l_t, b_r_t, box_t, grid_t = ta.shrink_box(twins.AABB, twins.GRID, new_aabb, mask_grid)
    assert_close(
        f"alpha_mask.shrink_box[{'same' if mask_grid == twins.GRID else 'finer'}].ranges",
        {"t_l": np.array(t_l_j), "b_r": np.array(b_r_j), "grid": np.array(grid_j)},
        {"t_l": np.array(t_l_t), "b_r": np.array(b_r_t), "grid": np.array(grid_t)},
        EXACT,
    )
    assert_close(f"alpha_mask.shrink_box[{'same' if mask_grid == twins.GRID else 'finer'}].aabb", box_j, box_t)


@pytest.mark.parametrize("model", ["VM", "CP"])
def test_compute_dense_alpha_of_a_model(twins, model):
    tm, jm = twins.blob_pair(model)
    step = jm.step_size
    got = ja.compute_dense_alpha(lambda x: density_at(jm.params, jm.field_cfg, jm.state.aabb, x), jm.aabb, MASK_GRID, step)
    want = ta.compute_dense_alpha(lambda p: tm.density(tm.normalize_coord(p)), tm.aabb, MASK_GRID, float(tm.stepSize))
    assert_close(f"alpha_mask.compute_dense_alpha[{model}]", got, want)


def test_rays_hit_mask(twins):
    mask, _ = ta.build_alpha_mask(torch.from_numpy(_alpha_xyz()), twins.AABB, 1e-3)
    o, d = twins.camera_rays(1024, seed=6, miss_fraction=0.3)
    fn = jax.jit(ja.rays_hit_mask, static_argnums=(3, 4, 8))
    got = fn(jnp.asarray(o), jnp.asarray(d), jnp.asarray(twins.AABB), 0.5, 6.0, jnp.float32(0.06), jnp.asarray(mask.numpy()), jnp.asarray(twins.AABB), 128)
    want = ta.rays_hit_mask(torch.from_numpy(o), torch.from_numpy(d), twins.AABB, 0.5, 6.0, 0.06, mask, twins.AABB, 128)
    assert 0 < int(want.sum()) < len(o)
    assert_close("alpha_mask.rays_hit_mask", got, want, EXACT)
