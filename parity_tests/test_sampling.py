"""sampling: ray-box entry, the box-hit test, normalisation and stepped samples with a given jitter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_tensorf.sampling as js
import torch_reference.sampling as ts
from compare import EXACT, assert_close

STEP = 0.0437
N = 96


@pytest.fixture(scope="module")
def rays():
    rng = np.random.default_rng(11)
    n = 600
    o = rng.normal(size=(n, 3))
    o = o / np.linalg.norm(o, axis=1, keepdims=True) * rng.uniform(0.2, 3.5, (n, 1))  # some start inside
    d = rng.uniform(-1, 1, (n, 3)) - o
    d[:40] = -d[:40]  # pointing away
    d[np.arange(40, 60), rng.integers(0, 3, 20)] = 0.0  # one zero component (official 1e-6 rule)
    d[60:64] = [[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, -1]]
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    return o.astype(np.float32), d.astype(np.float32)


def test_ray_aabb_tmin(twins, rays):
    o, d = rays
    got = jax.jit(js.ray_aabb_tmin, static_argnums=(3, 4))(jnp.asarray(o), jnp.asarray(d), jnp.asarray(twins.AABB), 0.3, 6.0)
    want = ts.ray_aabb_tmin(torch.from_numpy(o), torch.from_numpy(d), twins.AABB, 0.3, 6.0)
    assert_close("sampling.ray_aabb_tmin", got, want)


def test_ray_aabb_hit(twins, rays):
    o, d = rays
    got = jax.jit(js.ray_aabb_hit)(jnp.asarray(o), jnp.asarray(d), jnp.asarray(twins.AABB))
    want = ts.ray_aabb_hit(torch.from_numpy(o), torch.from_numpy(d), twins.AABB)
    assert 0 < int(np.asarray(got).sum()) < len(o)
    assert_close("sampling.ray_aabb_hit", got, want, EXACT)


def test_normalize_coord(twins):
    xyz = twins.to_world(twins.points(1000, seed=3, lo=-1.2, hi=1.2))
    got = jax.jit(js.normalize_coord)(jnp.asarray(xyz), jnp.asarray(twins.AABB))
    want = ts.normalize_coord(torch.from_numpy(xyz), twins.AABB)
    assert_close("sampling.normalize_coord", got, want)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_sample_ray(twins, rays, mode):
    o, d = rays
    jit = twins.jitter(len(o), seed=5) if mode == "train" else None
    fn = jax.jit(js.sample_ray, static_argnums=(3, 4, 6))
    z_j, xyz_j, in_j = fn(
        jnp.asarray(o), jnp.asarray(d), jnp.asarray(twins.AABB), 0.3, 6.0, jnp.float32(STEP), N, None if jit is None else jnp.asarray(jit)
    )
    z_t, xyz_t, in_t = ts.sample_ray(
        torch.from_numpy(o), torch.from_numpy(d), twins.AABB, 0.3, 6.0, STEP, N, None if jit is None else torch.from_numpy(jit)
    )
    assert_close(f"sampling.sample_ray[{mode}]", {"z_vals": z_j, "xyz": xyz_j}, {"z_vals": z_t, "xyz": xyz_t})
    # in-box flags: equal except where a sample sits within float rounding of a face
    flips = np.asarray(in_j) != in_t.numpy()
    xyz = xyz_t.numpy()
    near_face = np.min(np.abs(np.concatenate([xyz - twins.AABB[0], xyz - twins.AABB[1]], -1)), -1) < 1e-5
    assert_close(f"sampling.sample_ray[{mode}].in_box(away from faces)", np.asarray(in_j)[~near_face], in_t.numpy()[~near_face], EXACT)
    assert not np.any(flips & ~near_face)
