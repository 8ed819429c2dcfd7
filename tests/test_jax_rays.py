"""jax_tensorf.rays: camera rays made on the device equal SplitData's, bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_tensorf import ieee
from jax_tensorf.rays import cameras, rays_at, view_rays


def _bits_equal(got, want) -> None:
    np.testing.assert_array_equal(np.asarray(got).view(np.int32), np.asarray(want).view(np.int32))


def test_rays_at_equal_split_rays(lego_small, small_dataset):
    for split in (lego_small["train"], small_dataset["train"]):
        rng = np.random.default_rng(0)
        idx = np.concatenate([[0, split.n_rays - 1], rng.integers(0, split.n_rays, 20_000)]).astype(np.int32)
        with ieee.x64():
            o, d = jax.jit(rays_at)(cameras(split), idx)
        want_o, want_d = split.rays(idx)
        _bits_equal(o, want_o)
        _bits_equal(d, want_d)


def test_view_rays_equal_split_rays_of_the_views(lego_small):
    # (not SplitData.view_rays: its matmul rounds differently from SplitData.rays by an ulp)
    split = lego_small["train"]
    views = np.array([0, 3, 9], np.int32)
    with ieee.x64():
        o, d = jax.jit(view_rays)(cameras(split), jnp.asarray(views))
    assert o.shape == d.shape == (3, split.height, split.width, 3)
    for k, v in enumerate(views):
        want_o, want_d = split.rays(int(v) * split.n_pixels + np.arange(split.n_pixels))
        _bits_equal(np.asarray(o[k]).reshape(-1, 3), want_o)
        _bits_equal(np.asarray(d[k]).reshape(-1, 3), want_d)
