"""The weighted-row-gather lookups (``fields.LOOKUP_VARIANTS``: ``jax_tensorf.lookup_vjp``,
``jax_tensorf.lookup_pallas``): values and gradients against a float64 reference and the ``flat``
lookup (grids and coordinates), active sizes inside zero-padded buffers, float32 accumulation of
16-bit grids, many points on one row (the Pallas interpret mode), and the Triton lowering that a
GPU would compile. (``tests/test_jax_fields.py`` compares every variant's features and grid
gradients with ``flat`` as well.)"""

from __future__ import annotations

import contextlib
import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_helpers import scatter_dtypes
from jax_tensorf import fields, lookup_pallas, lookup_vjp
from tensorf_common.config import ConfigError

VARIANTS = fields.LOOKUP_VARIANTS
GRID = [5, 7, 6]  # [X, Y, Z], non-cubic
COMPS = (2, 3, 5)


def _rand(rng, shape):
    return jnp.asarray((1.0 + 0.5 * rng.normal(size=shape)).astype(np.float32))


def _grids(seed=3):
    rng = np.random.default_rng(seed)
    vm = {
        "planes": [_rand(rng, fields.plane_shape(GRID, k, COMPS[k])) for k in range(3)],
        "lines": [_rand(rng, fields.line_shape(GRID, k, COMPS[k])) for k in range(3)],
    }
    cp = {"lines": [_rand(rng, fields.line_shape(GRID, k, 4)) for k in range(3)]}
    return vm, cp


def _points(n=60, seed=5, lo=-1.15, hi=1.15):
    return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, size=(n, 3)).astype(np.float32))


# ------------------------------------------------------------------ the weighted row gather itself


def _np_weighted_rows(table, idx, wts, g):
    """float64 reference: the gather, its table gradient and its weight gradient."""
    table, wts, g = (np.asarray(x, np.float64) for x in (table, wts, g))
    idx = np.asarray(idx)
    out = sum(wts[k][:, None] * table[idx[k]] for k in range(idx.shape[0]))
    d_table = np.zeros_like(table)
    for k in range(idx.shape[0]):
        np.add.at(d_table, idx[k], wts[k][:, None] * g)
    d_wts = np.stack([np.sum(table[idx[k]] * g, axis=-1) for k in range(idx.shape[0])])
    return out, d_table, d_wts


WEIGHTED_ROWS = {
    "vjp": functools.partial(lookup_vjp.weighted_rows, accumulate="scatter"),
    "sorted": functools.partial(lookup_vjp.weighted_rows, accumulate="sorted"),
    "pallas": lookup_pallas.weighted_rows,
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_weighted_rows_and_its_gradients_match_a_float64_reference(variant):
    """Many updates per row (9 rows, 3 x 200 corner rows), a channel count that is not a power of
    two (Pallas pads it to 8) and a point count that is not a multiple of the kernel's block."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(9, 5)).astype(np.float32)
    idx = rng.integers(0, 9, size=(3, 200)).astype(np.int32)
    wts = rng.uniform(0, 1, size=(3, 200)).astype(np.float32)
    g = rng.normal(size=(200, 5)).astype(np.float32)
    fn = WEIGHTED_ROWS[variant]
    out, vjp = jax.vjp(lambda t, w: fn(t, jnp.asarray(idx), w), jnp.asarray(table), jnp.asarray(wts))
    d_table, d_wts = vjp(jnp.asarray(g))
    want = _np_weighted_rows(table, idx, wts, g)
    assert out.dtype == d_table.dtype == d_wts.dtype == jnp.float32
    for got, ref in zip((out, d_table, d_wts), want):
        assert got.shape == ref.shape
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_unknown_accumulation_is_an_error():
    with pytest.raises(ValueError, match="accumulate"):
        lookup_vjp.weighted_rows(jnp.ones((3, 2)), jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 4)), "atomic")


# ------------------------------------------------------------------ through the field lookups


@functools.partial(jax.jit, static_argnums=(5, 6))
def _loss_and_grads(vm, cp, pts, wv, wc, variant, padded_sizes=None):
    """Features and the gradients of random projections w.r.t. the grids and the coordinates.
    ``padded_sizes``: a static [X, Y, Z] tuple passed as traced ``sizes``."""
    sizes = None if padded_sizes is None else jnp.asarray(padded_sizes, jnp.int32)

    def loss(vm, cp, pts):
        f = fields.vm_features(vm["planes"], vm["lines"], pts, variant, sizes=sizes)
        c = fields.cp_features(cp["lines"], pts, variant, sizes=sizes)
        return jnp.sum(f * wv) + jnp.sum(c * wc), (f, c)

    grads, feats = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(vm, cp, pts)
    return feats, grads


@pytest.fixture(scope="module")
def case():
    vm, cp = _grids()
    pts = _points()
    rng = np.random.default_rng(6)
    wv = jnp.asarray(rng.normal(size=(60, sum(COMPS))).astype(np.float32))
    wc = jnp.asarray(rng.normal(size=(60, 4)).astype(np.float32))
    return vm, cp, pts, wv, wc


@pytest.fixture(scope="module")
def flat_reference(case):
    return _loss_and_grads(*case, "flat")


def _assert_same(got, ref, what):
    for (path, a), b in zip(jax.tree.leaves_with_path(ref), jax.tree.leaves(got)):
        assert a.shape == b.shape and a.dtype == b.dtype, (what, jax.tree_util.keystr(path))
        scale = float(jnp.max(jnp.abs(a)))
        assert scale > 0.05, (what, jax.tree_util.keystr(path))  # not trivially zero
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-6 * max(1.0, scale), (what, jax.tree_util.keystr(path))


def _pad_grid(grid: dict, buffer: list[int]) -> dict:
    """Zero-pad every plane and line of a grid to the shapes of a ``buffer`` grid size."""
    def pad(a, shape):
        return jnp.pad(a, [(0, s - n) for s, n in zip(shape, a.shape)])

    out = {"lines": [pad(l, fields.line_shape(buffer, k, l.shape[-1])) for k, l in enumerate(grid["lines"])]}
    if "planes" in grid:
        out["planes"] = [pad(p, fields.plane_shape(buffer, k, p.shape[-1])) for k, p in enumerate(grid["planes"])]
    return out


def _crop_like(padded: dict, grid: dict) -> tuple[dict, dict]:
    """(the active part, the padding) of each array of a padded gradient tree."""
    active = jax.tree.map(lambda a, ref: a[tuple(slice(0, n) for n in ref.shape)], padded, grid)

    def padding(a, ref):
        mask = np.ones(a.shape, bool)
        mask[tuple(slice(0, n) for n in ref.shape)] = False
        return np.asarray(a)[mask]

    return active, jax.tree.map(padding, padded, grid)


@pytest.mark.parametrize("variant", VARIANTS)
def test_active_sizes_inside_padded_buffers(case, flat_reference, variant):
    """Grids padded to a larger buffer, looked up with ``sizes`` = their real size: the ``flat``
    lookup's features and gradients of the unpadded grids (the grids' and the coordinates', the
    latter through the custom backward's weight cotangent; points outside [-1, 1] included), and
    no gradient at all in the padding. The padding holds 7 instead of 0, so a read of it would
    show; the grid and the buffer are non-cubic, so a size read from the wrong axis would too.
    (``tests/test_jax_fields.py`` compares every variant with ``flat`` on unpadded grids.)"""
    vm, cp, pts, wv, wc = case
    buffer = [9, 8, 11]
    assert bool(jnp.any(jnp.abs(pts) > 1.0))
    vm_p, cp_p = (jax.tree.map(lambda a: a + (a == 0) * 7.0, _pad_grid(g, buffer)) for g in (vm, cp))
    feats, (g_vm, g_cp, g_pts) = _loss_and_grads(vm_p, cp_p, pts, wv, wc, variant, tuple(GRID))
    _assert_same(feats, flat_reference[0], f"{variant} padded features")
    (a_vm, pad_vm), (a_cp, pad_cp) = _crop_like(g_vm, vm), _crop_like(g_cp, cp)
    _assert_same((a_vm, a_cp, g_pts), flat_reference[1], f"{variant} padded gradients")
    for leaf in jax.tree.leaves((pad_vm, pad_cp)):
        assert leaf.size > 0 and not np.any(leaf)


@pytest.mark.parametrize("variant", ["flat", "gather", *VARIANTS])
def test_single_plane_and_line_lookups(variant):
    """``plane_lookup`` / ``line_lookup`` (the benchmark's single lookups) against ``grid_sample``,
    also with the active extent of a padded plane and line (all but ``gather``)."""
    rng = np.random.default_rng(11)
    plane = jnp.asarray(rng.normal(size=(6, 9, 3)).astype(np.float32))
    line = jnp.asarray(rng.normal(size=(7, 3)).astype(np.float32))
    uv = jnp.asarray(rng.uniform(-1.2, 1.2, size=(50, 2)).astype(np.float32))
    got_p = fields.plane_lookup(plane, uv, variant, out_dtype=jnp.bfloat16)
    got_l = fields.line_lookup(line, uv[:, 0], variant)
    assert got_p.dtype == jnp.bfloat16 and got_l.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got_p, np.float32), np.asarray(fields.grid_sample_2d(plane, uv)), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(np.asarray(got_l), np.asarray(fields.grid_sample_1d(line, uv[:, 0])), rtol=1e-6, atol=1e-6)
    if variant == "gather":
        return
    # the active extent of a padded plane and line (padding of 5s that must not be read)
    padded_p = jnp.pad(plane, ((0, 3), (0, 2), (0, 0)), constant_values=5.0)
    padded_l = jnp.pad(line, ((0, 4), (0, 0)), constant_values=5.0)
    got_p = fields.plane_lookup(padded_p, uv, variant, hw=(jnp.int32(6), jnp.int32(9)))
    got_l = fields.line_lookup(padded_l, uv[:, 0], variant, length=jnp.int32(7))
    np.testing.assert_allclose(np.asarray(got_p), np.asarray(fields.grid_sample_2d(plane, uv)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_l), np.asarray(fields.grid_sample_1d(line, uv[:, 0])), rtol=1e-6, atol=1e-6)


def test_single_lookups_reject_layout_variants():
    with pytest.raises(ConfigError, match="vmap_variant"):
        fields.plane_lookup(jnp.ones((3, 3, 2)), jnp.zeros((4, 2)), "pairs")
    with pytest.raises(ConfigError, match="vmap_variant"):
        fields.line_lookup(jnp.ones((3, 2)), jnp.zeros((4,)), "rays")


# ------------------------------------------------------------------ float32 accumulation


@pytest.mark.parametrize("variant", VARIANTS)
def test_16_bit_grids_accumulate_their_gradient_in_float32(variant):
    """A bf16 plane looked up with a bf16 cotangent: the backward scatters float32 rows (no 16-bit
    scatter in the lowered program), and the gradient equals the float64 sum of the bf16 updates
    rounded once to bf16 (a bf16 scatter-add would round after every one of the ~100 updates per
    row)."""
    rng = np.random.default_rng(12)
    plane = jnp.asarray(rng.normal(size=(3, 4, 8)).astype(np.float32)).astype(jnp.bfloat16)
    uv = jnp.asarray(rng.uniform(-1, 1, size=(600, 2)).astype(np.float32))
    g = jnp.asarray(rng.normal(size=(600, 8)).astype(np.float32)).astype(jnp.bfloat16)

    def grad(p):
        return jax.vjp(lambda q: fields.plane_lookup(q, uv, variant), p)[1](g)[0]

    scatters = set(scatter_dtypes(jax.jit(grad).lower(plane).as_text()))
    assert "f32" in scatters and not scatters & {"bf16", "f16"}, scatters
    got = np.asarray(jax.jit(grad)(plane), np.float64)
    idx, wts = fields.plane_corner_rows(plane.shape, uv[:, 0], uv[:, 1])
    _, d_table, _ = _np_weighted_rows(np.zeros((12, 8)), idx, wts, np.asarray(g, np.float32))
    want = np.asarray(jnp.asarray(d_table, jnp.float32).astype(jnp.bfloat16), np.float64).reshape(3, 4, 8)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ Pallas


def test_pallas_interpret_mode_keeps_every_update_of_a_crowded_row():
    """400 points on a 3-row line: nearly every atomic add of a block hits a row another point of
    the block hits too. Interpret mode applies a block's atomic add as one read-add-write, so the
    backward runs with blocks of one point there; the gradient must have every update."""
    rng = np.random.default_rng(13)
    line = jnp.asarray(rng.normal(size=(3, 4)).astype(np.float32))
    t = jnp.asarray(rng.uniform(-1, 1, size=400).astype(np.float32))
    g = jnp.asarray(rng.normal(size=(400, 4)).astype(np.float32))

    @functools.partial(jax.jit, static_argnums=0)
    def grad(variant, line):
        return jax.vjp(lambda l: fields.line_lookup(l, t, variant), line)[1](g)[0]

    np.testing.assert_allclose(np.asarray(grad("pallas", line)), np.asarray(grad("flat", line)), rtol=1e-5, atol=1e-5)


def _triton_modules(fn, *args) -> str:
    """The Triton modules of ``fn``'s Pallas kernels, lowered for a CUDA GPU on this host."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
    return buf.getvalue()


def test_pallas_kernels_lower_to_triton_with_float32_atomic_adds():
    """The GPU path, lowered (not run) on this host: both kernels become Triton modules, and the
    backward's atomic adds are ``tt.atomic_rmw fadd`` on float32 rows even for a bf16 table."""
    try:
        from jax.experimental.pallas import triton  # noqa: F401
    except ImportError as exc:  # pragma: no cover - a jaxlib without the Triton bindings
        pytest.skip(f"no Pallas Triton backend in this jaxlib: {exc}")
    wr = lookup_pallas.make_weighted_rows(interpret=False, debug=True)

    def loss(table, uv, g):
        idx, wts = fields.plane_corner_rows((30, 20), uv[:, 0], uv[:, 1])
        return jnp.sum(wr(table, idx, wts) * g)

    args = (jnp.zeros((600, 48), jnp.bfloat16), jnp.zeros((1000, 2)), jnp.zeros((1000, 48)))
    text = _triton_modules(jax.grad(loss), *args)
    assert "tt.func public @grid_lookup_gather" in text and "tt.func public @grid_lookup_scatter_add" in text
    atomics = [line for line in text.splitlines() if "tt.atomic_rmw" in line]
    assert len(atomics) == 4  # one per corner
    assert all("fadd" in a and "xf32>" in a and "bf16" not in a for a in atomics), atomics
