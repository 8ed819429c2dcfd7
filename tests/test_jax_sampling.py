"""jax_tensorf.sampling: box entry (clamped to [near, far], zero directions), uniformly stepped samples
with one jitter per ray, the in-box mask, and per-ray jitter that is neither shared across rays
(the seed's bug) nor dependent on the batch size."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_tensorf.sampling import normalize_coord, per_ray_jitter, ray_aabb_hit, ray_aabb_tmin, sample_ray

BOX = jnp.asarray(np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]], np.float32))


def _rays(o, d):
    return jnp.asarray(np.asarray(o, np.float32)), jnp.asarray(np.asarray(d, np.float32))


def test_normalize_coord_maps_box_to_unit_cube():
    aabb = jnp.asarray(np.array([[-1.0, 0.0, 2.0], [3.0, 1.0, 2.5]], np.float32))
    pts = jnp.asarray(np.array([[-1.0, 0.0, 2.0], [3.0, 1.0, 2.5], [1.0, 0.5, 2.25], [5.0, 0.25, 2.0]], np.float32))
    np.testing.assert_allclose(
        np.asarray(normalize_coord(pts, aabb)), [[-1, -1, -1], [1, 1, 1], [0, 0, 0], [2, -0.5, -1]], atol=1e-6
    )


def test_ray_aabb_tmin_entry_and_clamp():
    s = 1 / np.sqrt(2)
    o, d = _rays(
        [[-3, 0, 0], [0, 0, -3], [-3, -3, 0.5], [-10, 0, 0], [0, 0, 0], [-2.2, 0, 0]],
        [[1, 0, 0], [0, 0, 1], [s, s, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]],
    )
    got = np.asarray(ray_aabb_tmin(o, d, BOX, 0.5, 6.0))
    # entries: 2, 2, 2*sqrt(2); 9 -> far 6; inside the box (entry -1) -> near 0.5; 1.2
    np.testing.assert_allclose(got, [2.0, 2.0, 2 * np.sqrt(2), 6.0, 0.5, 1.2], rtol=1e-6, atol=1e-6)
    got = np.asarray(ray_aabb_tmin(o, d, BOX, 1.5, 6.0))
    np.testing.assert_allclose(got[[0, 5]], [2.0, 1.5], rtol=1e-6)  # 1.2 is below near=1.5


def test_ray_aabb_tmin_zero_direction_components_are_finite():
    """Zero components are replaced by 1e-6 (official): a ray exactly on a face plane, parallel to
    it, gives 0/1e-6 = 0, not 0/0 = NaN."""
    o, d = _rays([[-3, 1, 0], [-3, -1, 1], [0.5, 0.5, -4], [-3, 0, 0]], [[1, 0, 0], [1, 0, 0], [0, 0, 1], [1, -0.0, 0]])
    got = np.asarray(ray_aabb_tmin(o, d, BOX, 0.0, 10.0))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, [2.0, 2.0, 3.0, 2.0], rtol=1e-6)
    hit = np.asarray(ray_aabb_hit(*_rays([[-3, 0, 0], [-3, 2, 0], [0, 0, -3]], [[1, 0, 0], [1, 0, 0], [0, 0.0, 1]]), BOX))
    assert hit.tolist() == [True, False, True]


def test_sample_ray_spacing_and_shapes_without_jitter():
    o, d = _rays([[-3, 0.2, 0.1], [0.3, -4, 0], [2, 2, 2]], [[1, 0, 0], [0, 1, 0], [0.6, 0.8, 0]])
    step, n = 0.125, 40
    z, xyz, in_box = sample_ray(o, d, BOX, 2.0, 6.0, step, n)
    assert z.shape == (3, n) and xyz.shape == (3, n, 3) and in_box.shape == (3, n) and in_box.dtype == jnp.bool_
    z, xyz, in_box = map(np.asarray, (z, xyz, in_box))
    np.testing.assert_allclose(np.diff(z, axis=1), step, rtol=0, atol=2e-6)
    np.testing.assert_allclose(z[:, 0], np.asarray(ray_aabb_tmin(o, d, BOX, 2.0, 6.0)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(xyz, np.asarray(o)[:, None] + np.asarray(d)[:, None] * z[..., None], rtol=0, atol=1e-5)
    # the in-box mask is exactly "every coordinate within the box"
    np.testing.assert_array_equal(in_box, np.all((xyz >= -1) & (xyz <= 1), axis=-1))
    # ray 0 enters at t=2 and leaves at t=4: 2/0.125 + 1 = 17 samples inside; ray 2 starts outside and
    # moves away (t clamped to near): nothing inside
    assert in_box[0].sum() == 17 and in_box[0, :17].all()
    assert in_box[2].sum() == 0


def test_sample_ray_one_jitter_per_ray():
    rng = np.random.default_rng(0)
    o = rng.normal(size=(16, 3))
    o = 3 * o / np.linalg.norm(o, axis=1, keepdims=True)
    d = -o / 3 + rng.normal(scale=0.1, size=(16, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o, d = _rays(o, d)
    step, n = 0.05, 32
    jitter = jnp.asarray(rng.uniform(0, 1, 16).astype(np.float32))
    z0, _, _ = sample_ray(o, d, BOX, 2.0, 6.0, step, n)
    z1, xyz1, _ = sample_ray(o, d, BOX, 2.0, 6.0, step, n, jitter)
    shift = np.asarray(z1) - np.asarray(z0)
    # every sample of a ray is shifted by the same step * jitter (one jitter per ray, not per sample)
    np.testing.assert_allclose(shift, np.broadcast_to(step * np.asarray(jitter)[:, None], shift.shape), rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.diff(np.asarray(z1), axis=1), step, rtol=0, atol=2e-6)
    np.testing.assert_allclose(
        np.asarray(xyz1), np.asarray(o)[:, None] + np.asarray(d)[:, None] * np.asarray(z1)[..., None], atol=1e-5
    )


def test_per_ray_jitter_differs_per_ray_and_is_in_unit_interval():
    key = jax.random.PRNGKey(7)
    j = np.asarray(per_ray_jitter(key, 4096))
    assert j.shape == (4096,) and j.dtype == np.float32
    assert j.min() >= 0.0 and j.max() < 1.0
    # the seed used one key for every ray (identical jitter across the batch)
    assert len(np.unique(j)) > 4000
    assert abs(j.mean() - 0.5) < 0.02 and abs(j.std() - np.sqrt(1 / 12)) < 0.02
    other = np.asarray(per_ray_jitter(jax.random.PRNGKey(8), 4096))
    assert np.mean(other == j) < 0.01  # another step's key gives other offsets


@pytest.mark.parametrize("small", [1, 7, 100])
def test_per_ray_jitter_does_not_depend_on_batch_size(small):
    key = jax.random.PRNGKey(123)
    big = np.asarray(per_ray_jitter(key, 256))
    np.testing.assert_array_equal(np.asarray(per_ray_jitter(key, small)), big[:small])


def test_sample_ray_from_a_first_sample_repeats_the_longer_call():
    rng = np.random.default_rng(0)
    o = rng.uniform(-3, 3, (64, 3)).astype(np.float32)
    d = rng.normal(size=(64, 3)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    box = jnp.asarray([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    full = jax.jit(lambda o, d: sample_ray(o, d, box, 0.5, 6.0, jnp.float32(0.01), 300))(o, d)
    part = jax.jit(lambda o, d, f: sample_ray(o, d, box, 0.5, 6.0, jnp.float32(0.01), 100, first=f))(o, d, jnp.int32(170))
    for a, b in zip(full, part):
        np.testing.assert_array_equal(np.asarray(a)[:, 170:270], np.asarray(b))
