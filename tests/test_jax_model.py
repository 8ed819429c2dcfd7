"""jax_tensorf.model: TensoRF.create, upsample / shrink geometry (as tensorf_common.geometry says),
an alpha-mask update on a fresh model, and render_chunks (compacted, chunked) equal to a plain
uncompacted render."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_helpers import SMALL_CP_RGB, SMALL_VM_FEA, SMALL_VM_RGB, blob_model, numpy_model, rays_at_box
from jax_tensorf import alpha_mask as am
from jax_tensorf import fields
from jax_tensorf.model import TensoRF
from tensorf_common.config import RenderConfig
from tensorf_common.geometry import BLENDER_NEAR_FAR, step_size_and_n_samples

BOX = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]], np.float32)


def _model(field=SMALL_VM_RGB, grid=(12, 14, 10), render_cfg=None, aabb=BOX):
    """Models for the geometry tests are built from numpy values (see jax_helpers.numpy_model)."""
    return numpy_model(field, list(grid), render_cfg, aabb)


def test_create_shapes_state_and_geometry():
    """(A cubic 16^3 grid and the smoke preset's field: the eager random draws of the initialisation
    compile once per array shape, and these are the shapes the smoke trainings use too.)"""
    aabb = np.array([[-1.0, -1.5, -0.5], [1.0, 1.5, 0.5]], np.float32)
    m = TensoRF.create(jax.random.PRNGKey(0), SMALL_VM_FEA, RenderConfig(step_ratio=0.5), aabb, [16, 16, 16], BLENDER_NEAR_FAR, True)
    assert m.near_far == BLENDER_NEAR_FAR and m.white_bg
    assert m.grid_size == [16, 16, 16]
    p = m.params
    assert set(p) == {"density", "app", "basis_mat", "render"}
    assert [x.shape for x in p["density"]["planes"]] == [(16, 16, 4)] * 3
    assert [x.shape for x in p["density"]["lines"]] == [(16, 4)] * 3
    assert [x.shape for x in p["app"]["planes"]] == [(16, 16, 8)] * 3
    assert [x.shape for x in p["app"]["lines"]] == [(16, 8)] * 3
    assert p["basis_mat"]["kernel"].shape == (24, 12)
    assert p["render"]["mlp_0"]["kernel"].shape == (12 + 3 + 2 * 2 * 12 + 2 * 2 * 3, 32)
    step, n = step_size_and_n_samples(aabb, [16, 16, 16], 0.5)
    assert m.step_size == pytest.approx(step, rel=1e-7) and m.n_samples == n
    np.testing.assert_array_equal(m.aabb, aabb)
    assert m.mask_grid_size is None and not m.has_mask()
    assert m.state.mask.shape == (2, 2, 2) and bool(np.asarray(m.state.mask).all())  # "no mask"
    # non-trainable state is not in the params pytree; official init scale 0.1 for VM grids
    assert all(np.asarray(x).dtype == np.float32 for x in jax.tree.leaves(m.params))
    grids = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves([p["density"], p["app"]])])
    assert abs(grids.std() - 0.1) < 0.01
    planes = [np.asarray(x) for x in p["density"]["planes"] + p["app"]["planes"]]
    assert all(not np.array_equal(a, b) for i, a in enumerate(planes) for b in planes[i + 1 :] if a.shape == b.shape)
    # the same key gives the same model; another key another one
    again = TensoRF.create(jax.random.PRNGKey(0), SMALL_VM_FEA, RenderConfig(step_ratio=0.5), aabb, [16, 16, 16])
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(p)))


def test_upsample_changes_grid_step_and_samples():
    # equal component counts: density and app arrays share shapes (the eager resize compiles per shape)
    field = dataclasses.replace(SMALL_VM_RGB, density_n_comp=(2, 2, 2), app_n_comp=(2, 2, 2))
    m = _model(field, (12, 14, 10), RenderConfig(step_ratio=0.5))
    before = jax.tree.map(np.asarray, m.params)
    reso = [17, 19, 15]
    m.upsample(reso)
    assert m.grid_size == reso
    step, n = step_size_and_n_samples(BOX, reso, 0.5)
    assert m.step_size == pytest.approx(step, rel=1e-7) and m.n_samples == n
    assert step < step_size_and_n_samples(BOX, [12, 14, 10], 0.5)[0]
    planes, lines = fields.upsample_vm(before["density"]["planes"], before["density"]["lines"], reso)
    for a, b in zip(planes + lines, m.params["density"]["planes"] + m.params["density"]["lines"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(m.params["basis_mat"]["kernel"]), before["basis_mat"]["kernel"])
    cp = _model(SMALL_CP_RGB, (12, 14, 10))
    cp.upsample(reso)
    assert cp.grid_size == reso and [l.shape[0] for l in cp.params["app"]["lines"]] == [15, 19, 17]


def test_shrink_makes_the_grid_non_cubic():
    m = _model(SMALL_VM_RGB, (21, 21, 21))  # units 0.1
    before = jax.tree.map(np.asarray, m.params)
    new_box = np.array([[-0.52, -0.3, 0.07], [0.46, 0.81, 0.5]], np.float32)
    m.shrink(new_box)
    t_l, b_r, aabb_after, grid_after = am.shrink_box(BOX, [21, 21, 21], new_box, [21, 21, 21])
    assert m.grid_size == grid_after == [11, 12, 5]
    np.testing.assert_array_equal(m.aabb, np.asarray(aabb_after))
    step, n = step_size_and_n_samples(aabb_after, grid_after, m.render_cfg.step_ratio)
    assert m.step_size == pytest.approx(step, rel=1e-7) and m.n_samples == n
    # planes/lines cropped with the index ranges: plane 0 is (Y, X)
    np.testing.assert_array_equal(np.asarray(m.params["density"]["planes"][0]), before["density"]["planes"][0][7:19, 5:16])
    np.testing.assert_array_equal(np.asarray(m.params["app"]["lines"][0]), before["app"]["lines"][0][11:16])
    # with a mask at another resolution the box snaps to grid points
    m2 = _model(SMALL_VM_RGB, (21, 21, 21))
    m2.set_mask(np.ones((11, 11, 11), bool), BOX)
    m2.shrink(new_box)
    np.testing.assert_allclose(m2.aabb, [[-0.5, -0.3, 0.1], [0.5, 0.8, 0.5]], atol=1e-6)
    assert m2.grid_size == [11, 12, 5]


def test_update_alpha_mask_on_a_fresh_model_returns_none_and_keeps_going():
    m = _model(SMALL_CP_RGB, (10, 11, 9))
    # official init: density feature ~ 0 -> softplus(-10) * step: alpha far below 1e-4 everywhere
    assert m.update_alpha_mask(m.grid_size) is None
    assert m.mask_grid_size is None and m.state.mask.shape == (2, 2, 2)
    o = jnp.asarray(np.array([[-3.0, 0.1, 0.2], [0.0, -3.0, 0.0]], np.float32))
    d = jnp.asarray(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32))
    out = m.render(o, d, m.render_options(m.n_samples, train=False, want_depth=True))
    assert np.all(np.isfinite(np.asarray(out["rgb"]))) and np.asarray(out["acc"]).max() < 1e-2


def test_render_chunks_equals_uncompacted_render():
    """``render_chunks`` (compacted samples and thresholded appearance, chunked; the re-render path on
    overflow is exercised in test_jax_eval_render) equals a plain render with neither compaction, at
    two chunk sizes."""
    m = blob_model()
    n = 600
    o, d = rays_at_box(n, miss=np.arange(0, n, 3))
    opts = m.render_options(m.n_samples, train=False, want_depth=True, appearance="threshold")
    assert opts.sample_capacity is None and opts.app_capacity is None
    ref = {k: np.asarray(v) for k, v in m.render(jnp.asarray(o), jnp.asarray(d), opts).items() if k != "stats"}
    acc = ref["acc"]
    assert acc.max() > 0.9 and (acc < 1e-6).sum() >= n // 3  # a dense blob and empty rays
    for chunk in (128, 512):
        got = m.render_chunks(o, d, chunk=chunk, want_depth=True)
        assert got["rgb"].shape == (n, 3) and got["depth"].shape == (n,) and got["acc"].shape == (n,)
        for k in ("rgb", "acc", "depth"):
            np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=2e-6, err_msg=f"{k}, chunk {chunk}")
    assert set(m.render_chunks(o[:5], d[:5], want_depth=False)) == {"rgb", "acc"}


def test_dense_density_lookup_renders_and_trains_like_the_factored_one():
    """``render.density_lookup = "dense"`` wired through the model: a render of a real density blob and
    the gradient of its colour loss equal the factored lookup's (up to float32 rounding)."""
    from jax_tensorf.model import render_model

    m = blob_model()
    o, d = (jnp.asarray(x) for x in rays_at_box(64, seed=3))
    target = jnp.asarray(np.random.default_rng(4).random((64, 3)).astype(np.float32))
    opts = m.render_options(m.n_samples, train=False, appearance="all")
    assert opts.density_lookup == "factored"  # the default, as the official code

    def loss_and_out(params, opts):
        out = render_model(params, m.state, o, d, cfg=m.field_cfg, opts=opts, variant="flat")
        return jnp.mean((out["rgb"] - target) ** 2), out

    results = []
    for lookup in ("factored", "dense"):
        o_l = dataclasses.replace(opts, density_lookup=lookup)
        (loss, out), grads = jax.jit(jax.value_and_grad(loss_and_out, has_aux=True), static_argnums=1)(m.params, o_l)
        results.append((out, grads))
    (ref, g_ref), (got, g_got) = results
    assert float(jnp.max(ref["acc"])) > 0.9  # the blob is hit
    np.testing.assert_allclose(np.asarray(got["rgb"]), np.asarray(ref["rgb"]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got["acc"]), np.asarray(ref["acc"]), rtol=0, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_ref["density"]), jax.tree.leaves(g_got["density"])):
        scale = float(jnp.max(jnp.abs(a)))
        assert scale > 0
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * scale


def test_unknown_density_lookup_raises_config_error_naming_the_field():
    from jax_tensorf.model import density_at
    from tensorf_common.config import ConfigError

    m = blob_model()
    with pytest.raises(ConfigError, match=r"render\.density_lookup: unknown 'sparse'"):
        density_at(m.params, m.field_cfg, m.state.aabb, jnp.zeros((2, 3)), lookup="sparse")
