"""jax_tensorf.rendering: raw2alpha (zero last interval, the 1e-10), compositing, median depth,
compaction, and render_rays with analytic fields: every appearance strategy against the plain one
(topk with k = N exactly, threshold compacted, sample compaction, sample with k = N), overflow
counts, the alpha-mask hook."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_tensorf.rendering import (
    RenderOptions,
    compact,
    composite,
    median_depth,
    raw2alpha,
    render_rays,
    sample_dists,
)
from jax_tensorf.sampling import sample_ray

# ------------------------------------------------------------------ raw2alpha, dists


def test_sample_dists_last_interval_is_zero():
    z = jnp.asarray(np.array([[1.0, 1.5, 2.5, 2.75]], np.float32))
    np.testing.assert_allclose(np.asarray(sample_dists(z)), [[0.5, 1.0, 0.25, 0.0]])


def _raw2alpha_numpy(sigma, dist):
    alpha = 1.0 - np.exp(-sigma * dist)
    T = np.cumprod(np.concatenate([np.ones_like(alpha[..., :1]), 1.0 - alpha + 1e-10], -1), -1)
    return alpha, alpha * T[..., :-1], T[..., -1]


def test_raw2alpha_known_values():
    sigma = jnp.asarray(np.array([[1.0, 2.0, 3.0]], np.float32))
    dist = sample_dists(jnp.asarray(np.array([[0.0, 0.5, 1.0]], np.float32)))
    alpha, w, t_last = map(np.asarray, raw2alpha(sigma, dist))
    a0, a1 = 1 - np.exp(-0.5), 1 - np.exp(-1.0)
    np.testing.assert_allclose(alpha, [[a0, a1, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(w, [[a0, a1 * (1 - a0 + 1e-10), 0.0]], rtol=1e-6)  # last weight 0: no 1e10 interval
    np.testing.assert_allclose(t_last, [(1 - a0 + 1e-10) * (1 - a1 + 1e-10) * (1 + 1e-10)], rtol=1e-6)


def test_raw2alpha_keeps_the_1e10_in_transmittance():
    """Behind an opaque sample the transmittance is 1e-10 (official), not 0."""
    sigma = jnp.asarray(np.array([[1e6, 1e6, 1e6, 0.0]], np.float32))
    alpha, w, t_last = map(np.asarray, raw2alpha(sigma, jnp.ones((1, 4))))
    np.testing.assert_array_equal(alpha, [[1.0, 1.0, 1.0, 0.0]])
    np.testing.assert_allclose(w[0, :3], [1.0, 1e-10, 1e-20], rtol=1e-5)
    assert w[0, 3] == 0.0
    np.testing.assert_allclose(t_last, [1e-30], rtol=1e-4)


def test_raw2alpha_matches_sequential_product_and_bounds():
    rng = np.random.default_rng(0)
    sigma = rng.exponential(2.0, size=(64, 50)).astype(np.float32) * (rng.random((64, 50)) < 0.4)
    z = np.sort(rng.uniform(2, 6, size=(64, 50)), axis=1).astype(np.float32)
    dist = np.asarray(sample_dists(jnp.asarray(z)))
    alpha, w, t_last = map(np.asarray, jax.jit(raw2alpha)(jnp.asarray(sigma), jnp.asarray(dist)))
    ra, rw, rt = _raw2alpha_numpy(sigma.astype(np.float64), dist.astype(np.float64))
    np.testing.assert_allclose(alpha, ra, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(w, rw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(t_last, rt, rtol=1e-5, atol=1e-7)
    assert w.min() >= 0 and w.max() <= 1 and w.sum(-1).max() <= 1 + 1e-6


# ------------------------------------------------------------------ composite, depth


def test_composite_white_background_clamp_and_depth():
    w = jnp.asarray(np.array([[0.2, 0.3, 0.0], [0.9, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.0]], np.float32))
    rgb = np.zeros((4, 3, 3), np.float32)
    rgb[0, 0] = [1, 0, 0]
    rgb[0, 1] = [0, 1, 0]
    rgb[1, 0] = [2.0, -1.0, 0.5]  # out of range colours get clamped after compositing
    rgb[3] = 0.0
    z = jnp.asarray(np.tile(np.array([2.0, 3.0, 4.0], np.float32), (4, 1)))
    out_w, depth, acc = map(np.asarray, composite(w, jnp.asarray(rgb), z, True))
    np.testing.assert_allclose(acc, [0.5, 0.9, 0.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(out_w, [[0.7, 0.8, 0.5], [1.0, 0.0, 0.55], [1, 1, 1], [0, 0, 0]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(depth, [0.2 * 2 + 0.3 * 3, 1.8, 0.0, 2.5], rtol=1e-6)  # expected distance, no bg term
    out_b, _, _ = map(np.asarray, composite(w, jnp.asarray(rgb), z, False))
    np.testing.assert_allclose(out_b, [[0.2, 0.3, 0.0], [1.0, 0.0, 0.45], [0, 0, 0], [0, 0, 0]], rtol=1e-6, atol=1e-6)


def test_median_depth_including_rays_that_never_reach_half():
    w = jnp.asarray(
        np.array([[0.2, 0.3, 0.4, 0.0], [0.1, 0.1, 0.1, 0.1], [0.7, 0.2, 0.0, 0.0], [0.0, 0.0, 0.49, 0.0]], np.float32)
    )
    z = jnp.asarray(np.tile(np.array([2.0, 3.0, 4.0, 5.0], np.float32), (4, 1)))
    got = np.asarray(median_depth(w, z, 6.0))
    # cum 0.2, 0.5 -> z=3; never 0.5 -> far; first sample already past half -> its z (not 0); 0.49 -> far
    np.testing.assert_allclose(got, [3.0, 6.0, 2.0, 6.0])


# ------------------------------------------------------------------ compact


@pytest.mark.parametrize("p, cap", [(0.1, 64), (0.3, 64), (0.5, 1024), (0.0, 64)])
def test_compact_equals_nonzero_with_size(p, cap):
    rng = np.random.default_rng(int(p * 10) + cap)
    mask = jnp.asarray(rng.random(600) < p)
    idx, ok, count = jax.jit(compact, static_argnums=1)(mask, cap)
    want = jnp.nonzero(mask, size=cap, fill_value=mask.size)[0]
    assert idx.shape == (cap,) and idx.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(ok), np.asarray(want) < mask.size)
    assert int(count) == int(np.asarray(mask).sum())


# ------------------------------------------------------------------ render_rays on analytic fields

BOX = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]], np.float32)
R, N = 96, 48
STEP = 0.09


def density_fn(x):
    """A soft blob off-centre plus a soft slab, weights spread over many samples. Smooth, and zero on
    the box faces: the first sample of a ray sits exactly on the face it enters by, where float
    rounding decides whether it counts as inside, so the density there must not matter."""
    window = jnp.prod(jnp.clip(1.0 - x * x, 0.0, 1.0), axis=-1) ** 2
    blob = 6.0 * jnp.exp(-jnp.sum((x - jnp.array([0.2, -0.1, 0.0])) ** 2, axis=-1) / 0.25)
    slab = 3.0 * jnp.exp(-(((x[..., 2] + 0.4) / 0.1) ** 2))
    return (blob + slab) * window


def app_fn(x, d):
    return jax.nn.sigmoid(jnp.stack([3 * x[..., 0] + d[..., 0], 2 * x[..., 1] - x[..., 2], x[..., 2] * d[..., 2] * 4], -1))


@pytest.fixture(scope="module")
def rays():
    rng = np.random.default_rng(3)
    o = rng.normal(size=(R, 3))
    o = 3.2 * o / np.linalg.norm(o, axis=1, keepdims=True)
    target = rng.uniform(-0.9, 0.9, size=(R, 3))
    target[: R // 8] = 5 * rng.normal(size=(R // 8, 3))  # some rays miss the box
    d = target - o
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return jnp.asarray(o.astype(np.float32)), jnp.asarray(d.astype(np.float32))


def _opts(**kw):
    base = dict(n_samples=N, near=2.0, far=6.0, white_bg=True, distance_scale=1.0, appearance="all", topk=N, want_depth=True)
    base.update(kw)
    return RenderOptions(**base)


@functools.partial(jax.jit, static_argnames=("opts", "masked"))
def _render(o, d, jitter=None, key=None, *, opts, masked=False):
    mask_fn = (lambda x: x[..., 0] < 0.1) if masked else None
    return render_rays(o, d, jnp.asarray(BOX), STEP, density_fn, app_fn, mask_fn, opts, jitter, key)


def _np(out):
    return {k: np.asarray(v) for k, v in out.items() if k != "stats"}


@functools.partial(jax.jit, static_argnames=("masked",))
def _reference(o, d, masked=False):
    """The plain computation, written out with the component functions: samples, density on the
    valid ones, raw2alpha, and the colour of every sample."""
    z, xyz, valid = sample_ray(o, d, jnp.asarray(BOX), 2.0, 6.0, STEP, N)
    if masked:
        valid = valid & (xyz[..., 0] < 0.1)
    _, w, _ = raw2alpha(jnp.where(valid, density_fn(xyz), 0.0), sample_dists(z))
    c = app_fn(xyz, jnp.broadcast_to(d[:, None], xyz.shape))
    rgb_map, depth, acc = composite(w, c, z, True)
    return {"z": z, "w": w, "c": c, "rgb": rgb_map, "depth": depth, "acc": acc, "median": median_depth(w, z, 6.0)}


def test_render_rays_matches_a_direct_reference(rays):
    """'all': colour and depth equal the composite of raw2alpha over every valid sample."""
    o, d = rays
    out = _np(_render(o, d, opts=_opts()))
    ref = _np(_reference(o, d))
    np.testing.assert_allclose(out["rgb"], ref["rgb"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["acc"], ref["acc"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["depth"], ref["depth"], rtol=1e-6, atol=1e-5)
    acc = ref["acc"]
    assert acc.max() > 0.9 and (acc < 1e-6).sum() >= R // 10 and ((acc > 0.05) & (acc < 0.9)).sum() > 5  # a mix of rays


def test_alpha_mask_hook_zeroes_density_outside(rays):
    """mask_fn removes samples: same as a density that is zero where the mask is off."""
    o, d = rays
    got = _np(_render(o, d, opts=_opts(), masked=True))
    ref = _np(_reference(o, d, masked=True))
    np.testing.assert_allclose(got["rgb"], ref["rgb"], rtol=0, atol=1e-6)
    assert np.abs(ref["rgb"] - _np(_reference(o, d))["rgb"]).max() > 1e-2  # the mask matters here


def _slab_density(x):
    """A blob plus a hard slab: on this data the topk path once differed from 'all' by 1 ulp in a few
    colours (the colours were computed through differently fused code), before k >= N was routed
    through the 'all' path."""
    blob = 6.0 * jnp.exp(-jnp.sum((x - jnp.array([0.2, -0.1, 0.0])) ** 2, axis=-1) / 0.25)
    return blob + 2.0 * (jnp.abs(x[..., 2] + 0.4) < 0.1)


@functools.partial(jax.jit, static_argnames=("opts",))
def _render_slab(o, d, *, opts):
    return render_rays(o, d, jnp.asarray(BOX), STEP, _slab_density, app_fn, None, opts)


def test_topk_with_k_equal_n_equals_all_exactly(rays):
    """The issue's requirement: topk with k = N gives exactly the 'all' render (bit for bit)."""
    o, d = rays
    for render in (_render, _render_slab):
        ref = _np(render(o, d, opts=_opts(appearance="all")))
        got = _np(render(o, d, opts=_opts(appearance="topk", topk=N)))
        for k in ("rgb", "acc", "depth"):
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_topk_small_k_sums_the_k_largest_weights_and_median_depth(rays):
    o, d = rays
    k = 6
    got = _np(_render(o, d, opts=_opts(appearance="topk", topk=k, depth="median")))
    ref = _np(_reference(o, d))
    w, c = ref["w"].astype(np.float64), ref["c"].astype(np.float64)
    top = np.argsort(-w, axis=1, kind="stable")[:, :k]
    sel = np.zeros_like(w, bool)
    np.put_along_axis(sel, top, True, axis=1)
    want = np.clip(np.sum((w * sel)[..., None] * c, 1) + (1 - w.sum(1))[:, None], 0, 1)
    np.testing.assert_allclose(got["rgb"], want, rtol=0, atol=1e-5)
    assert np.abs(got["rgb"] - ref["rgb"]).max() > 1e-3  # k < N really leaves samples out
    # depth='median': the first sample where the accumulated weight reaches 0.5, far where never
    np.testing.assert_allclose(got["depth"], ref["median"], rtol=0, atol=1e-6)
    assert np.any(got["depth"] == 6.0) and np.any(got["depth"] < 6.0)


THRES = dict(appearance="threshold", weight_thres=1e-3)


def test_threshold_masked_equals_threshold_compacted(rays):
    o, d = rays
    masked = _render(o, d, opts=_opts(**THRES))
    n_app = int(masked["stats"]["app_samples"])
    assert 0 < n_app < R * N // 4
    compacted = _render(o, d, opts=_opts(**THRES, app_capacity=n_app + 100))
    assert int(compacted["stats"]["app_overflow"]) == 0
    assert int(compacted["stats"]["app_samples"]) == n_app
    a, b = _np(masked), _np(compacted)
    for k in ("rgb", "acc", "depth"):
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-6, err_msg=k)
    # the threshold really drops samples compared to 'all'
    assert np.abs(_np(_render(o, d, opts=_opts()))["rgb"] - a["rgb"]).max() > 1e-5


def test_sample_capacity_compaction_equals_no_compaction(rays):
    o, d = rays
    plain = _render(o, d, opts=_opts(**THRES))
    n_valid = int(plain["stats"]["valid_samples"])
    assert 0 < n_valid < R * N * 2 // 3
    packed = _render(o, d, opts=_opts(**THRES, sample_capacity=n_valid + 64))
    assert int(packed["stats"]["sample_overflow"]) == 0
    assert int(packed["stats"]["valid_samples"]) == n_valid
    assert int(packed["stats"]["app_samples"]) == int(plain["stats"]["app_samples"])
    a, b = _np(plain), _np(packed)
    for k in ("rgb", "acc", "depth"):
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-6, err_msg=k)


def test_overflow_counts_are_reported(rays):
    o, d = rays
    plain = _render(o, d, opts=_opts(**THRES))
    n_valid, n_app = int(plain["stats"]["valid_samples"]), int(plain["stats"]["app_samples"])
    cap = 128
    assert n_valid > cap and n_app > cap
    small = _render(o, d, opts=_opts(**THRES, sample_capacity=cap))
    assert int(small["stats"]["sample_overflow"]) == n_valid - cap
    small_app = _render(o, d, opts=_opts(**THRES, app_capacity=cap))
    assert int(small_app["stats"]["app_overflow"]) == n_app - cap
    # dropped samples change the picture (the counts are what tells the caller)
    assert np.abs(np.asarray(small["rgb"]) - np.asarray(plain["rgb"])).max() > 1e-3
    assert np.abs(np.asarray(small_app["rgb"]) - np.asarray(plain["rgb"])).max() > 1e-3


def test_sample_strategy_with_k_equal_n_equals_all(rays):
    o, d = rays
    ref = _np(_render(o, d, opts=_opts(appearance="all")))
    got = _render(o, d, key=jax.random.PRNGKey(0), opts=_opts(appearance="sample", topk=N))
    np.testing.assert_allclose(np.asarray(got["rgb"]), ref["rgb"], rtol=0, atol=1e-5)
    assert int(got["stats"]["app_samples"]) == R * N
