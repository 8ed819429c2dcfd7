"""jax_tensorf.regularizers: density L1, TV (official TVLoss normalisation on planes, x 1e-2; CP lines
x 1e-3) and ortho, against hand computations and a channel-first numpy transcription."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_tensorf.regularizers import density_l1, ortho_loss, tv_line, tv_loss, tv_plane


def test_density_l1_by_hand():
    grid = {
        "planes": [jnp.full((2, 3, 2), -2.0), jnp.asarray(np.array([[[1.0], [-3.0]]])), jnp.zeros((4, 4, 1))],
        "lines": [jnp.asarray(np.array([[0.5, -0.5], [1.5, 0.0]])), jnp.ones((3, 1)), jnp.full((2, 2), -0.25)],
    }
    # planes: 2 + 2 + 0; lines: (0.5 + 0.5 + 1.5 + 0) / 4 + 1 + 0.25
    np.testing.assert_allclose(float(density_l1(grid)), 4.0 + 0.625 + 1.0 + 0.25, rtol=1e-6)
    cp = {"lines": grid["lines"]}
    np.testing.assert_allclose(float(density_l1(cp)), 0.625 + 1.0 + 0.25, rtol=1e-6)


def test_tv_plane_by_hand():
    plane = jnp.asarray(np.array([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]], np.float32)[..., None])  # H=2, W=3, C=1
    # dh = [2, 1, -1] -> 6 / (C (H-1) W = 3) = 2; dw = [1, 2], [0, 0] -> 5 / (C H (W-1) = 4) = 1.25
    np.testing.assert_allclose(float(tv_plane(plane)), 2 * (2.0 + 1.25), rtol=1e-6)


def _official_tv_numpy(x_chw: np.ndarray) -> float:
    """The official TVLoss on a (1, C, H, W) tensor, transcribed to numpy (batch 1)."""
    C, H, W = x_chw.shape
    h_tv = np.sum((x_chw[:, 1:, :] - x_chw[:, :-1, :]) ** 2)
    w_tv = np.sum((x_chw[:, :, 1:] - x_chw[:, :, :-1]) ** 2)
    return 2.0 * (h_tv / (C * (H - 1) * W) + w_tv / (C * H * (W - 1))) / 1


def test_tv_loss_planes_official_normalisation():
    rng = np.random.default_rng(0)
    planes = [rng.normal(size=s).astype(np.float32) for s in ((4, 5, 3), (6, 5, 2), (6, 4, 3))]  # (H, W, C)
    got = float(tv_loss({"planes": [jnp.asarray(p) for p in planes], "lines": [jnp.ones((4, 3))] * 3}))
    want = 1e-2 * sum(_official_tv_numpy(np.transpose(p, (2, 0, 1)).astype(np.float64)) for p in planes)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # lines do not count for VM (line TV was removed officially)
    got2 = float(tv_loss({"planes": [jnp.asarray(p) for p in planes], "lines": [jnp.asarray(rng.normal(size=(4, 3)))] * 3}))
    np.testing.assert_allclose(got2, got, rtol=1e-7)


def test_tv_loss_cp_lines():
    line = jnp.asarray(np.array([[0.0, 1.0], [1.0, 1.0], [3.0, 0.0]], np.float32))  # L=3, C=2
    # d = [[1, 0], [2, -1]] -> 6 / (C (L-1) = 4) * 2 = 3
    np.testing.assert_allclose(float(tv_line(line)), 3.0, rtol=1e-6)
    np.testing.assert_allclose(float(tv_loss({"lines": [line, line, line]})), 3 * 3.0 * 1e-3, rtol=1e-6)


def test_ortho_loss_by_hand():
    a = np.array([1.0, 0.0, 1.0])
    b = np.array([1.0, 1.0, 0.0])
    c = np.array([0.0, 2.0, 0.0])
    line = jnp.asarray(np.stack([a, b, c], axis=1).astype(np.float32))  # (L=3, C=3)
    # Gram off-diagonals: a.b = 1, a.c = 0, b.c = 2 (each twice) -> mean |.| = (1 + 0 + 2) * 2 / 6 = 1
    np.testing.assert_allclose(float(ortho_loss([line])), 1.0, rtol=1e-6)
    orth = jnp.asarray(np.eye(4, 2, dtype=np.float32))  # orthogonal components -> 0
    np.testing.assert_allclose(float(ortho_loss([line, orth])), 1.0, rtol=1e-6)
    rng = np.random.default_rng(1)
    lines = [rng.normal(size=(7, 4)).astype(np.float32) for _ in range(3)]
    want = 0.0
    for l in lines:
        g = l.T.astype(np.float64) @ l.astype(np.float64)
        want += np.abs(g[~np.eye(4, dtype=bool)]).mean()
    np.testing.assert_allclose(float(ortho_loss([jnp.asarray(l) for l in lines])), want, rtol=1e-5)


def test_ortho_loss_single_component_line_adds_zero():
    """A line with one component has no off-diagonal entry: it adds 0 (as torch_reference), not the
    official NaN of an empty mean, which would poison a rank-1 model's loss."""
    two = jnp.asarray(np.array([[1.0, 1.0], [0.0, 1.0]], np.float32))  # off-diagonal 1
    one = jnp.ones((5, 1))
    assert float(ortho_loss([two, one])) == pytest.approx(1.0)


def test_regularizer_gradients_are_finite_and_nonzero():
    rng = np.random.default_rng(2)
    grid = {
        "planes": [jnp.asarray(rng.normal(size=(4, 5, 3)).astype(np.float32)) for _ in range(3)],
        "lines": [jnp.asarray(rng.normal(size=(6, 3)).astype(np.float32)) for _ in range(3)],
    }
    g = jax.jit(jax.grad(lambda g: density_l1(g) + tv_loss(g) + ortho_loss(g["lines"])))(grid)
    for leaf in jax.tree.leaves(g):
        assert np.all(np.isfinite(np.asarray(leaf))) and np.abs(np.asarray(leaf)).max() > 0
