"""Static-shape training (jax_tensorf.static_grid and TrainConfig.static_shapes): grids in
zero-padded buffers with the active size traced give the exact-size results, bit for bit where the
same operations run (lookups, masks, crop, the alpha-mask update) and to float rounding where a
reduction runs over a larger array (the L1 mean) or one compiled function replaces eager ops (the
upsample); a whole run compiles its step once and follows the exact-size run."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_helpers import SMALL_CP_RGB, SMALL_VM_RGB, experiment, host_copy, numpy_model, replace_train
from jax_tensorf import alpha_mask as am
from jax_tensorf import fields, regularizers
from jax_tensorf import static_grid as sg
from jax_tensorf.model import buffered_alpha_mask, density_at
from tensorf_common.config import RenderConfig

GRID = [5, 7, 6]
BUF = [9, 8, 11]


def _grid(model: str, comps=(2, 3, 4), seed=0):
    rng = np.random.default_rng(seed)
    draw = lambda shape: jnp.asarray(rng.normal(size=shape).astype(np.float32))  # noqa: E731
    if model == "VM":
        return {"planes": [draw(fields.plane_shape(GRID, k, comps[k])) for k in range(3)],
                "lines": [draw(fields.line_shape(GRID, k, comps[k])) for k in range(3)]}
    return {"lines": [draw(fields.line_shape(GRID, k, comps[0])) for k in range(3)]}


def _padding_max(grid: dict, size, buf) -> float:
    """The largest magnitude in the padding of a padded grid."""
    rest = jax.tree.map(lambda x, y: jnp.max(jnp.abs(x - y)), grid, sg.pad_grid(sg.slice_grid(grid, size), buf))
    return max(float(x) for x in jax.tree.leaves(rest))


def _points(n=300, seed=1):
    # beyond [-1, 1] too: the zero padding of grid_sample must not become the buffer's padding
    return jnp.asarray(np.random.default_rng(seed).uniform(-1.2, 1.2, (n, 3)).astype(np.float32))


@pytest.mark.parametrize("variant", fields.VMAP_VARIANTS)
def test_vm_lookup_in_a_buffer_equals_the_exact_lookup_values_and_gradients(variant):
    grid, xyz = _grid("VM"), _points()
    xyz = xyz.reshape(20, 15, 3) if variant in ("rays", "samples") else xyz
    padded, sizes = sg.pad_grid(grid, BUF), sg.as_size(GRID)

    def loss(g, sizes=None):
        return jnp.sum(fields.vm_features(g["planes"], g["lines"], xyz, variant, sizes=sizes) ** 2)

    want = fields.vm_features(grid["planes"], grid["lines"], xyz, variant)
    got = fields.vm_features(padded["planes"], padded["lines"], xyz, variant, sizes=sizes)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    g_exact = jax.grad(loss)(grid)
    g_pad = jax.grad(loss)(padded, sizes)
    for a, b in zip(jax.tree.leaves(sg.slice_grid(g_pad, GRID)), jax.tree.leaves(g_exact)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    assert _padding_max(g_pad, GRID, BUF) == 0.0  # nothing flows into the padding


@pytest.mark.parametrize("variant", ["flat", "gather"])
def test_cp_and_dense_lookups_in_a_buffer(variant):
    xyz = _points()
    cp, sizes = _grid("CP"), sg.as_size(GRID)
    cp_pad = sg.pad_grid(cp, BUF)
    np.testing.assert_array_equal(
        np.asarray(fields.cp_features(cp_pad["lines"], xyz, variant, sizes=sizes)),
        np.asarray(fields.cp_features(cp["lines"], xyz, variant)),
    )
    vm = _grid("VM")
    want = fields.dense_density_feature(vm, "VM", xyz)
    got = fields.dense_density_feature(sg.pad_grid(vm, BUF), "VM", xyz, sizes=sizes)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_regularisers_over_the_active_part():
    vm, sizes = _grid("VM"), sg.as_size(GRID)
    padded = sg.pad_grid(vm, BUF)
    for fn in (regularizers.density_l1, regularizers.tv_loss):
        want = fn(vm)
        got = fn(padded, sizes)
        assert float(got) == pytest.approx(float(want), rel=1e-5), fn.__name__
        g_exact = jax.grad(fn)(vm)
        g_pad = jax.grad(lambda g: fn(g, sizes))(padded)
        for a, b in zip(jax.tree.leaves(sg.slice_grid(g_pad, GRID)), jax.tree.leaves(g_exact)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
        # no gradient in the padding (|x| has derivative 1 at 0 in JAX: an unmasked L1 moves it)
        assert _padding_max(g_pad, GRID, BUF) == 0.0, fn.__name__
    cp = _grid("CP")
    assert float(regularizers.tv_loss(sg.pad_grid(cp, BUF), sizes)) == pytest.approx(float(regularizers.tv_loss(cp)), rel=1e-5)


def test_mask_query_in_a_buffer():
    rng = np.random.default_rng(3)
    mask = jnp.asarray(rng.random((6, 7, 5)) < 0.3)  # (Z, Y, X)
    box = jnp.asarray([[-1.0, -0.5, -1.2], [1.0, 0.8, 1.1]], jnp.float32)
    pts = jnp.asarray(rng.uniform(-1.5, 1.5, (2000, 3)).astype(np.float32))
    want = am.query_alpha_mask(mask, box, pts)
    got = am.query_alpha_mask(sg.pad_mask(mask, [9, 10, 8]), box, pts, sg.as_size([5, 7, 6]))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("model", ["VM", "CP"])
def test_upsample_and_crop_inside_the_buffer(model):
    grid, reso = _grid(model), [8, 6, 9]
    padded = sg.pad_grid(grid, [10, 10, 10])
    up = sg.resample_grid(padded, sg.as_size(GRID), sg.as_size(reso))
    if model == "VM":
        p, l = fields.upsample_vm(grid["planes"], grid["lines"], reso)
        want = {"planes": p, "lines": l}
    else:
        want = {"lines": fields.upsample_cp(grid["lines"], reso)}
    for a, b in zip(jax.tree.leaves(sg.slice_grid(up, reso)), jax.tree.leaves(want)):
        # one compiled function may contract a * (1 - f) + b * f into fused multiply-adds
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert sum(float(jnp.sum(jnp.abs(x))) for x in jax.tree.leaves(up)) == pytest.approx(
        sum(float(jnp.sum(jnp.abs(x))) for x in jax.tree.leaves(want)), rel=1e-6
    )  # zero past the new size
    t_l, b_r = [1, 2, 0], [4, 6, 5]
    crop = sg.crop_grid(padded, sg.as_size(t_l), sg.as_size([b - t for t, b in zip(t_l, b_r)]))
    if model == "VM":
        p, l = fields.shrink_vm(grid["planes"], grid["lines"], t_l, b_r)
        want = {"planes": p, "lines": l}
    else:
        want = {"lines": fields.shrink_cp(grid["lines"], t_l, b_r)}
    for a, b in zip(jax.tree.leaves(sg.slice_grid(crop, [3, 4, 5])), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("with_mask", [False, True])
def test_alpha_mask_update_in_a_buffer_equals_the_official_one(with_mask):
    field = dataclasses.replace(SMALL_VM_RGB, density_shift=-1.0)
    m = numpy_model(field, GRID, aabb=[[-1.0, -0.8, -1.2], [0.9, 1.0, 1.1]], seed=4)
    m.params = sg.map_grids(m.params, lambda g: jax.tree.map(lambda x: 10.0 * x, g))  # a density that varies
    if with_mask:
        rng = np.random.default_rng(5)
        m.set_mask(rng.random((4, 5, 6)) < 0.5, m.aabb)
    reso = [6, 5, 7]
    ref_alpha = am.compute_dense_alpha(
        lambda x: density_at(m.params, field, m.state.aabb, x, "flat"), m.aabb, reso, m.step_size,
        (lambda x: am.query_alpha_mask(m.state.mask, m.state.mask_aabb, x)) if with_mask else None,
    )
    ref_mask, ref_box = am.build_alpha_mask(ref_alpha, m.aabb, 0.3)
    assert 0 < int(np.sum(np.asarray(ref_mask))) < ref_mask.size  # neither empty nor full
    buf = [9, 8, 10]
    mask_active = m.mask_grid_size or [2, 2, 2]
    params = sg.map_grids(m.params, lambda g: sg.pad_grid(g, buf))
    state = m.state.replace(grid_size=sg.as_size(GRID), mask=sg.pad_mask(m.state.mask, buf), mask_size=sg.as_size(mask_active))
    mask, any_set, first, last = buffered_alpha_mask(
        params, state, sg.as_size(reso), jnp.float32(m.step_size), cfg=field, mask_buf=tuple(buf), slab=3, thres=0.3,
        use_mask=with_mask,
    )
    assert bool(any_set) and ref_box is not None
    np.testing.assert_array_equal(np.asarray(mask)[: reso[2], : reso[1], : reso[0]], np.asarray(ref_mask))
    assert not np.asarray(mask)[reso[2]:].any() and not np.asarray(mask)[:, reso[1]:].any()
    np.testing.assert_array_equal(sg.mask_box(m.aabb, reso, np.asarray(first), np.asarray(last)), ref_box)


@pytest.mark.parametrize("appearance", ["topk", "threshold"])
def test_render_with_buffers_and_a_sample_bound_equals_the_exact_render(appearance):
    """A static-shape step renders N_max samples per ray of which the first n are in use: the same
    colours as an exact render with n samples, packed (threshold, compacted) or not (top-k)."""
    from jax_tensorf.model import render_model

    render = RenderConfig(appearance=appearance, topk=4, sample_capacity=0.9 if appearance == "threshold" else None)
    m = numpy_model(dataclasses.replace(SMALL_VM_RGB, density_shift=-1.0), GRID, render, seed=6)
    rng = np.random.default_rng(7)
    o = jnp.asarray(np.tile([[0.0, 0.0, -3.0]], (64, 1)).astype(np.float32) + rng.normal(0, 0.2, (64, 3)).astype(np.float32))
    d = rng.normal([0, 0, 1], 0.15, (64, 3))
    d = jnp.asarray((d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32))
    jitter = jnp.asarray(rng.random(64).astype(np.float32))
    n = 12
    cap = lambda N: None if render.sample_capacity is None else 64 * N  # noqa: E731
    exact = render_model(m.params, m.state, o, d, jitter, cfg=m.field_cfg,
                         opts=m.render_options(n, train=True, sample_capacity=cap(n)))
    buf = [8, 9, 7]
    params = sg.map_grids(m.params, lambda g: sg.pad_grid(g, buf))
    state = m.state.replace(grid_size=sg.as_size(GRID), mask=sg.pad_mask(m.state.mask, buf), mask_size=sg.as_size([2, 2, 2]))
    static = render_model(params, state, o, d, jitter, cfg=m.field_cfg,
                          opts=m.render_options(20, train=True, sample_capacity=cap(20)), n_active=jnp.int32(n))
    np.testing.assert_allclose(np.asarray(static["rgb"]), np.asarray(exact["rgb"]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(static["acc"]), np.asarray(exact["acc"]), rtol=1e-6, atol=1e-6)
    assert float(jnp.max(exact["acc"])) > 0.1  # the rays see something


# ------------------------------------------------------------------ whole runs


def _run_cfg(static: bool):
    cfg = experiment(
        dataclasses.replace(SMALL_CP_RGB, density_shift=-2.0),
        RenderConfig(appearance="threshold", sample_capacity=0.9),
        n_iters=10, upsample_at=(3, 6), alpha_mask_at=(4,), n_voxel_init=8**3, n_voxel_final=12**3,
        batch_size=128, log_every=1,
    )
    return replace_train(cfg, static_shapes=static)


@pytest.fixture(scope="module")
def both_runs(small_dataset):
    from jax_tensorf.training import Trainer

    out = {}
    for static in (False, True):
        tr = Trainer(_run_cfg(static), small_dataset, log=lambda s: None)
        tr.run()
        out[static] = tr
    return out


def test_a_static_run_compiles_its_step_once_and_follows_the_exact_run(both_runs):
    exact, static = both_runs[False], both_runs[True]
    assert [e["event"] for e in static.events] == [e["event"] for e in exact.events]
    assert [e["event"] for e in exact.events if e["event"] in ("upsample", "alpha_mask")] == ["upsample", "alpha_mask", "upsample"]
    assert len(exact.compiles) >= 3 and len(static.compiles) == 1
    assert static.model.grid_size == exact.model.grid_size
    np.testing.assert_array_equal(static.model.aabb, exact.model.aabb)
    sm, em = static.model.exact(), exact.model
    np.testing.assert_array_equal(np.asarray(sm.state.mask), np.asarray(em.state.mask))
    for a, b in zip(jax.tree.leaves(host_copy(sm.params)), jax.tree.leaves(host_copy(em.params))):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([p.mse for p in static.history], [p.mse for p in exact.history], rtol=1e-4)


def test_a_static_run_resumes_from_its_checkpoint(both_runs, small_dataset, tmp_path):
    from jax_tensorf.training import Trainer

    static = both_runs[True]
    # the padding stayed zero through the steps and the events
    for name in ("density", "app"):
        assert _padding_max(static.model.params[name], static.model.grid_size, static.buf) == 0.0
    path = static.save_checkpoint(tmp_path / "ckpt.npz")
    again = Trainer.resume(path, small_dataset)
    assert again.buf == static.buf and again.model.grid_size == static.model.grid_size
    for a, b in zip(jax.tree.leaves(host_copy(again.model.params)), jax.tree.leaves(host_copy(static.model.params))):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(host_copy(again.opt_state)), jax.tree.leaves(host_copy(static.opt_state))):
        np.testing.assert_array_equal(a, b)
