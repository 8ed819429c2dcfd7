"""jax_tensorf.fields: grid_sample conventions by hand, channel-last layout, the vmap variants agree
(values and gradients, non-cubic grid), resize with align_corners, shrink, init shapes, density
activation, and bad options."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_helpers import (
    MAT_MODE_REF,
    VEC_MODE_REF,
    np_bilinear,
    np_bilinear_resize,
    np_cp_features,
    np_linear,
    np_resize_axis,
    np_vm_features,
)
from jax_tensorf import fields
from tensorf_common.config import ConfigError

VARIANTS = fields.VMAP_VARIANTS  # flat first: the reference the others are compared with
GRID = [5, 7, 6]  # [X, Y, Z], deliberately non-cubic
COMPS = (2, 3, 4)  # different per pair: a mixed-up pair order changes shapes


def test_axis_modes_are_official():
    assert tuple(map(tuple, fields.MAT_MODE)) == MAT_MODE_REF
    assert tuple(fields.VEC_MODE) == VEC_MODE_REF


# ------------------------------------------------------------------ grid_sample by hand


def _plane_2x3():
    """H=2, W=3, two channels (channel 1 = 10 x channel 0), channel-last (H, W, C)."""
    c0 = np.array([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]], np.float32)
    return jnp.asarray(np.stack([c0, 10 * c0], axis=-1))


def test_grid_sample_2d_hand_values_inside():
    plane = _plane_2x3()
    uv = jnp.array(
        [
            [-1.0, -1.0],  # corner (x=0, y=0)
            [1.0, 1.0],  # corner (x=2, y=1)
            [1.0, -1.0],  # x=2, y=0 -> u indexes W, v indexes H
            [-1.0, 1.0],  # x=0, y=1
            [0.0, 0.0],  # x=1, y=0.5 -> (2 + 16) / 2
            [0.5, -0.5],  # x=1.5, y=0.25 -> bilinear of 2, 4, 16, 32
        ]
    )
    got = np.asarray(fields.grid_sample_2d(plane, uv))
    x15_y0 = 0.5 * 2 + 0.5 * 4
    x15_y1 = 0.5 * 16 + 0.5 * 32
    want0 = np.array([1.0, 32.0, 4.0, 8.0, 9.0, 0.75 * x15_y0 + 0.25 * x15_y1])
    assert got.shape == (6, 2)
    np.testing.assert_allclose(got[:, 0], want0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[:, 1], 10 * want0, rtol=0, atol=1e-4)  # channel-last: channels ride along


def test_grid_sample_2d_zero_padding_outside():
    """Partly outside points interpolate towards 0 (zero padding), not towards the edge (border)."""
    plane = _plane_2x3()
    uv = jnp.array(
        [
            [1.5, -1.0],  # x = 2.5: half of plane[0, 2] (=4), half of a zero neighbour
            [-1.5, -1.0],  # x = -0.5: half of plane[0, 0] (=1)
            [0.0, 2.0],  # y = 1.5: half of plane[1, 1] (=16)
            [-1.0, -2.0],  # y = -0.5: half of plane[0, 0]
            [1.5, 2.0],  # x = 2.5, y = 1.5: a quarter of plane[1, 2] (=32)
            [3.0, 0.0],  # x = 4: entirely outside
            [0.0, -3.1],  # entirely outside
            [-3.0, -3.0],
        ]
    )
    got = np.asarray(fields.grid_sample_2d(plane, uv))[:, 0]
    np.testing.assert_allclose(got, [2.0, 0.5, 8.0, 0.5, 8.0, 0.0, 0.0, 0.0], rtol=0, atol=1e-5)


def test_grid_sample_2d_matches_reference_on_random_points():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(4, 5, 3)).astype(np.float32)  # H=4, W=5, C=3
    uv = rng.uniform(-1.6, 1.6, size=(300, 2)).astype(np.float32)
    got = np.asarray(fields.grid_sample_2d(jnp.asarray(plane), jnp.asarray(uv)))
    np.testing.assert_allclose(got, np_bilinear(plane, uv), rtol=0, atol=1e-5)


def test_grid_sample_1d_hand_values_and_padding():
    line = jnp.array([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0]])  # L=3, C=2
    t = jnp.array([-1.0, 0.0, 0.5, 1.0, 1.5, -1.5, 5.0, -2.0])
    got = np.asarray(fields.grid_sample_1d(line, t))
    # x = (t+1)/2*2: -1->0, 0->1, 0.5->1.5, 1->2, 1.5->2.5 (half of 4), -1.5->-0.5 (half of 1), outside -> 0
    want0 = np.array([1.0, 2.0, 3.0, 4.0, 2.0, 0.5, 0.0, 0.0])
    assert got.shape == (8, 2)
    np.testing.assert_allclose(got[:, 0], want0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[:, 1], 10 * want0, rtol=0, atol=1e-5)
    rng = np.random.default_rng(2)
    line = rng.normal(size=(7, 3)).astype(np.float32)
    t = rng.uniform(-1.5, 1.5, size=100).astype(np.float32)
    np.testing.assert_allclose(np.asarray(fields.grid_sample_1d(jnp.asarray(line), jnp.asarray(t))), np_linear(line, t), rtol=0, atol=1e-5)


# ------------------------------------------------------------------ vmap variants


def _rand(rng, shape):
    return jnp.asarray((1.0 + 0.5 * rng.normal(size=shape)).astype(np.float32))  # away from zero


@pytest.fixture(scope="module")
def vm_grid():
    rng = np.random.default_rng(3)
    return {
        "planes": [_rand(rng, fields.plane_shape(GRID, k, COMPS[k])) for k in range(3)],
        "lines": [_rand(rng, fields.line_shape(GRID, k, COMPS[k])) for k in range(3)],
    }


@pytest.fixture(scope="module")
def cp_grid():
    rng = np.random.default_rng(4)
    return {"lines": [_rand(rng, fields.line_shape(GRID, k, 5)) for k in range(3)]}


@pytest.fixture(scope="module")
def points():
    """(R=6, N=5, 3) normalised points, some outside [-1, 1] (zero padding must agree too)."""
    rng = np.random.default_rng(5)
    return jnp.asarray(rng.uniform(-1.15, 1.15, size=(6, 5, 3)).astype(np.float32))


@functools.partial(jax.jit, static_argnums=5)
def _features_and_grads(vm, cp, pts, wv, wc, variant):
    """``vm_features``, ``vm_density_feature`` and ``cp_features`` with one variant, and the gradients
    of random projections of ``vm_features`` and ``cp_features`` (one compile per variant).
    (``vm_density_feature`` sums the same per-pair products, so its gradient is the ``vm_features``
    one with equal weights; it is left out of the loss to keep the compile small.)"""

    def loss(vm, cp):
        f = fields.vm_features(vm["planes"], vm["lines"], pts, variant)
        c = fields.cp_features(cp["lines"], pts, variant)
        return jnp.sum(f * wv) + jnp.sum(c * wc), (f, c)

    grads, (f, c) = jax.grad(loss, argnums=(0, 1), has_aux=True)(vm, cp)
    return (f, fields.vm_density_feature(vm["planes"], vm["lines"], pts, variant), c), grads


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(6)
    return (
        jnp.asarray(rng.normal(size=(6, 5, sum(COMPS))).astype(np.float32)),
        jnp.asarray(rng.normal(size=(6, 5, 5)).astype(np.float32)),
    )


@pytest.fixture(scope="module")
def by_variant(vm_grid, cp_grid, points, weights):
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = _features_and_grads(vm_grid, cp_grid, points, *weights, variant)
        return cache[variant]

    return get


def test_vm_features_match_reference(vm_grid, points, by_variant):
    (got, dens, _), _ = by_variant("flat")
    got = np.asarray(got)
    assert got.shape == (6, 5, sum(COMPS))
    want = np_vm_features([np.asarray(p) for p in vm_grid["planes"]], [np.asarray(l) for l in vm_grid["lines"]], np.asarray(points).reshape(-1, 3))
    np.testing.assert_allclose(got.reshape(-1, sum(COMPS)), want, rtol=1e-5, atol=1e-5)
    dens = np.asarray(dens)
    assert dens.shape == (6, 5)
    np.testing.assert_allclose(dens.reshape(-1), want.sum(-1), rtol=1e-5, atol=1e-4)


def test_cp_features_match_reference(cp_grid, points, by_variant):
    got = np.asarray(by_variant("flat")[0][2])
    assert got.shape == (6, 5, 5)
    want = np_cp_features([np.asarray(l) for l in cp_grid["lines"]], np.asarray(points).reshape(-1, 3))
    np.testing.assert_allclose(got.reshape(-1, 5), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_vmap_variants_same_values(by_variant, variant):
    """The issue's requirement: every vmap variant gives the same numbers (max-abs <= 1e-6)."""
    refs, _ = by_variant("flat")
    gots, _ = by_variant(variant)
    for name, ref, got in zip(("vm_features", "vm_density_feature", "cp_features"), refs, gots):
        assert got.shape == ref.shape, name
        assert float(jnp.max(jnp.abs(got - ref))) <= 1e-6, (name, variant)


@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_vmap_variants_same_gradients(by_variant, variant):
    _, ref = by_variant("flat")
    _, got = by_variant(variant)
    ref_leaves, got_leaves = jax.tree.leaves_with_path(ref), jax.tree.leaves(got)
    assert len(ref_leaves) == len(got_leaves) == 9  # VM: 3 planes + 3 lines; CP: 3 lines
    for (path, a), b in zip(ref_leaves, got_leaves):
        assert a.shape == b.shape
        scale = float(jnp.max(jnp.abs(a)))
        assert scale > 0.1  # gradients are not trivially zero
        # scatter-add order differs between layouts: equal up to float32 rounding of the sums
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-6 * scale, (jax.tree_util.keystr(path), variant)


def test_unknown_variant_raises_config_error(vm_grid, points):
    with pytest.raises(ConfigError, match="vmap_variant"):
        fields.vm_features(vm_grid["planes"], vm_grid["lines"], points, "diagonal")
    with pytest.raises(ConfigError, match="vmap_variant"):
        fields.cp_features([jnp.ones((3, 2))] * 3, points, "diagonal")
    # the per-ray variants need (R, N, 3) points
    with pytest.raises(ConfigError, match="vmap_variant"):
        fields.vm_features(vm_grid["planes"], vm_grid["lines"], points.reshape(-1, 3), "rays")


# ------------------------------------------------------------------ dense density lookup


def _dense_vs_factored(grid, model, pts, w):
    """(factored, dense) density features and the gradients of ``sum(feature * w)`` w.r.t. the grid."""

    def factored(g):
        if model == "VM":
            return fields.vm_density_feature(g["planes"], g["lines"], pts, "flat")
        return jnp.sum(fields.cp_features(g["lines"], pts, "flat"), axis=-1)

    def dense(g):
        return fields.dense_density_feature(g, model, pts)

    out = []
    for fn in (factored, dense):
        val, grad = jax.value_and_grad(lambda g: jnp.sum(fn(g) * w))(grid)
        out.append((fn(grid), grad))
    return out


@pytest.mark.parametrize("model", ["VM", "CP"])
def test_dense_density_lookup_equals_the_factored_one(vm_grid, cp_grid, points, model):
    """A bilinear plane value times a linear line value is the trilinear interpolant of the vertex
    products, so the recomposed grid gives the factored values and gradients (points inside and
    outside [-1, 1], a non-cubic grid, different components per pair)."""
    grid = vm_grid if model == "VM" else cp_grid
    w = jnp.asarray(np.random.default_rng(8).normal(size=points.shape[:-1]).astype(np.float32))
    (f_ref, g_ref), (f_got, g_got) = _dense_vs_factored(grid, model, points, w)
    assert f_got.shape == f_ref.shape == points.shape[:-1]
    scale = float(jnp.max(jnp.abs(f_ref)))
    assert scale > 1.0
    assert float(jnp.max(jnp.abs(f_got - f_ref))) <= 1e-5 * scale
    assert bool(jnp.any(jnp.abs(points) > 1.0))  # the zero padding is exercised too
    leaves_ref, leaves_got = jax.tree.leaves(g_ref), jax.tree.leaves(g_got)
    assert len(leaves_ref) == len(leaves_got) == (6 if model == "VM" else 3)
    for a, b in zip(leaves_ref, leaves_got):
        gscale = float(jnp.max(jnp.abs(a)))
        assert a.shape == b.shape and gscale > 0.1
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * gscale


def test_dense_grid_holds_the_vertex_products(vm_grid):
    """The recomposed grid at vertex (i, j, k) is the sum of plane x line products there."""
    d = np.asarray(fields.vm_density_grid(vm_grid["planes"], vm_grid["lines"]))
    assert d.shape == tuple(GRID)
    P = [np.asarray(p) for p in vm_grid["planes"]]
    L = [np.asarray(l) for l in vm_grid["lines"]]
    for ijk in [(0, 0, 0), (4, 6, 5), (2, 3, 1), (1, 5, 4)]:
        want = 0.0
        for k in range(3):
            a, b = MAT_MODE_REF[k]
            want += float(np.sum(P[k][ijk[b], ijk[a]] * L[k][ijk[VEC_MODE_REF[k]]]))
        assert d[ijk] == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------ init, shapes


def test_init_vm_shapes_follow_axis_modes():
    # jitted: one compile for the six draws instead of one eager compile per array shape
    g = jax.jit(fields.init_vm, static_argnums=(1, 2, 3))(jax.random.PRNGKey(0), tuple(GRID), COMPS, 0.1)
    X, Y, Z = GRID
    assert [p.shape for p in g["planes"]] == [(Y, X, 2), (Z, X, 3), (Z, Y, 4)]
    assert [l.shape for l in g["lines"]] == [(Z, 2), (Y, 3), (X, 4)]
    for k in range(3):
        assert g["planes"][k].shape == fields.plane_shape(GRID, k, COMPS[k])
        assert g["lines"][k].shape == fields.line_shape(GRID, k, COMPS[k])
    assert fields.grid_size_of(g) == GRID
    allv = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(g)])  # 381 values
    assert abs(allv.std() - 0.1) < 0.02 and abs(allv.mean()) < 0.02  # scale * N(0, 1)
    assert len(np.unique(allv)) == allv.size  # every array has its own key


def test_init_cp_shapes():
    g = jax.jit(fields.init_cp, static_argnums=(1, 2, 3))(jax.random.PRNGKey(0), tuple(GRID), 5, 0.2)
    X, Y, Z = GRID
    assert set(g) == {"lines"}
    assert [l.shape for l in g["lines"]] == [(Z, 5), (Y, 5), (X, 5)]
    assert fields.grid_size_of(g) == GRID


# ------------------------------------------------------------------ resize, shrink


def test_upsample_vm_keeps_corners_and_matches_bilinear_reference(vm_grid):
    reso = [9, 11, 8]
    planes, lines = fields.upsample_vm(vm_grid["planes"], vm_grid["lines"], reso)
    X, Y, Z = reso
    assert [p.shape for p in planes] == [(Y, X, 2), (Z, X, 3), (Z, Y, 4)]
    assert [l.shape for l in lines] == [(Z, 2), (Y, 3), (X, 4)]
    for old, new in zip(vm_grid["planes"], planes):
        old, new = np.asarray(old), np.asarray(new)
        for i, j in ((0, 0), (0, -1), (-1, 0), (-1, -1)):  # align_corners: corners stay exactly
            np.testing.assert_allclose(new[i, j], old[i, j], rtol=0, atol=1e-6)
        np.testing.assert_allclose(new, np_bilinear_resize(old, *new.shape[:2]), rtol=0, atol=1e-5)
    for old, new in zip(vm_grid["lines"], lines):
        old, new = np.asarray(old), np.asarray(new)
        np.testing.assert_allclose(new[[0, -1]], old[[0, -1]], rtol=0, atol=1e-6)
        np.testing.assert_allclose(new, np_resize_axis(old, 0, new.shape[0]), rtol=0, atol=1e-5)


def test_upsample_preserves_the_field_at_grid_aligned_points(vm_grid):
    """Resizing with align_corners keeps the normalised coordinate frame: a linear function of the
    index stays the same function of u (a frame shift of half a voxel would break this)."""
    L = 6
    line = jnp.asarray(np.linspace(-1.0, 1.0, L, dtype=np.float32)[:, None])  # value == coordinate
    (up,) = [fields.upsample_cp([line, line, line], [13, 13, 13])[0]]
    u = jnp.linspace(-1.0, 1.0, 25)
    np.testing.assert_allclose(np.asarray(fields.grid_sample_1d(up, u))[:, 0], np.asarray(u), atol=1e-5)


def test_upsample_cp_matches_reference(cp_grid):
    reso = [8, 10, 9]
    lines = fields.upsample_cp(cp_grid["lines"], reso)
    assert [l.shape for l in lines] == [(9, 5), (10, 5), (8, 5)]
    for old, new in zip(cp_grid["lines"], lines):
        np.testing.assert_allclose(np.asarray(new), np_resize_axis(np.asarray(old), 0, new.shape[0]), rtol=0, atol=1e-5)


def test_shrink_vm_crops_each_axis(vm_grid):
    t_l, b_r = [1, 2, 0], [4, 7, 3]  # X 1..3, Y 2..6, Z 0..2
    planes, lines = fields.shrink_vm(vm_grid["planes"], vm_grid["lines"], t_l, b_r)
    assert [p.shape for p in planes] == [(5, 3, 2), (3, 3, 3), (3, 5, 4)]
    assert [l.shape for l in lines] == [(3, 2), (5, 3), (3, 4)]
    np.testing.assert_array_equal(np.asarray(planes[0]), np.asarray(vm_grid["planes"][0])[2:7, 1:4])
    np.testing.assert_array_equal(np.asarray(planes[2]), np.asarray(vm_grid["planes"][2])[0:3, 2:7])
    np.testing.assert_array_equal(np.asarray(lines[2]), np.asarray(vm_grid["lines"][2])[1:4])
    assert fields.grid_size_of({"planes": planes, "lines": lines}) == [3, 5, 3]
    cp = fields.shrink_cp(vm_grid["lines"], t_l, b_r)
    assert [l.shape[0] for l in cp] == [3, 5, 3]


# ------------------------------------------------------------------ density activation


def test_feature2density_softplus_and_relu():
    f = jnp.array([-5.0, 0.0, 9.0, 10.0, 12.0, 40.0])
    got = np.asarray(fields.feature2density(f, -10.0, "softplus"))
    want = np.log1p(np.exp(np.asarray(f, np.float64) - 10.0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert abs(float(got[3]) - np.log(2.0)) < 1e-6  # softplus(0)
    np.testing.assert_array_equal(np.asarray(fields.feature2density(f - 3.0, -10.0, "relu")), np.maximum(np.asarray(f) - 3.0, 0.0))
    with pytest.raises(ConfigError, match="fea2dense_act"):
        fields.feature2density(f, -10.0, "exp")
