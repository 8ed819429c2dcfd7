"""jax_tensorf.encoding: the official positional-encoding layout, the one-pass sincos accuracy, and
the real SH bases (degrees 0..2) by known values and orthonormality."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jax_tensorf.encoding import eval_sh_bases, positional_encoding, sincos


def _pe_numpy(x: np.ndarray, freqs: int) -> np.ndarray:
    """The official ordering, written out: for each input dimension d, for each frequency f, x_d * 2^f
    (dim-major); then all sines followed by all cosines; no pi."""
    cols = [x[..., d] * (2.0**f) for d in range(x.shape[-1]) for f in range(freqs)]
    pts = np.stack(cols, axis=-1) if cols else np.zeros(x.shape[:-1] + (0,))
    return np.concatenate([np.sin(pts), np.cos(pts)], axis=-1)


def test_positional_encoding_layout_dim_major_sin_then_cos():
    x = np.array([[0.1, -0.7, 1.3], [2.0, 0.0, -0.25]], np.float32)
    got = np.asarray(positional_encoding(jnp.asarray(x), 2))
    assert got.shape == (2, 12)
    np.testing.assert_allclose(got, _pe_numpy(x.astype(np.float64), 2), rtol=0, atol=1e-6)
    # spelled out for the first point: sin(x0), sin(2 x0), sin(x1), sin(2 x1), ... then the cosines
    want0 = [math.sin(0.1), math.sin(0.2), math.sin(-0.7), math.sin(-1.4), math.sin(1.3), math.sin(2.6)]
    np.testing.assert_allclose(got[0, :6], want0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[0, 6:], [math.cos(v) for v in (0.1, 0.2, -0.7, -1.4, 1.3, 2.6)], rtol=0, atol=1e-6)


def test_positional_encoding_batch_dims_and_widths():
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, size=(2, 4, 5)).astype(np.float32)
    got = np.asarray(positional_encoding(jnp.asarray(x), 3))
    assert got.shape == (2, 4, 30)  # 2 * freqs * D
    np.testing.assert_allclose(got, _pe_numpy(x.astype(np.float64), 3), rtol=0, atol=2e-6)
    assert positional_encoding(jnp.asarray(x), 0).shape == (2, 4, 0)


def test_sincos_accuracy_against_float64_up_to_1e3():
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            rng.uniform(-1e3, 1e3, 20000),
            rng.uniform(-4, 4, 5000),
            np.arange(-636, 637) * (np.pi / 2),  # range-reduction boundaries k * pi/2
            np.arange(-636, 637) * (np.pi / 2) + np.pi / 4,  # halfway, where the quadrant flips
            [0.0, -0.0, 1e-8, 999.99, -999.99, 1000.0, -1000.0],
        ]
    ).astype(np.float32)
    s, c = sincos(jnp.asarray(x))
    x64 = x.astype(np.float64)
    err_s = np.max(np.abs(np.asarray(s, np.float64) - np.sin(x64)))
    err_c = np.max(np.abs(np.asarray(c, np.float64) - np.cos(x64)))
    assert s.dtype == jnp.float32 and c.dtype == jnp.float32
    assert err_s <= 2e-7 and err_c <= 2e-7, (err_s, err_c)


# ------------------------------------------------------------------ spherical harmonics

C0 = 1.0 / (2.0 * math.sqrt(math.pi))
C1 = math.sqrt(3.0) / (2.0 * math.sqrt(math.pi))
C2_XY = math.sqrt(15.0) / (2.0 * math.sqrt(math.pi))
C2_ZZ = math.sqrt(5.0) / (4.0 * math.sqrt(math.pi))
C2_XX_YY = math.sqrt(15.0) / (4.0 * math.sqrt(math.pi))


def _sh_by_hand(d) -> list[float]:
    """The official sh.py bases (plenoctree signs), from the closed-form constants."""
    x, y, z = d
    return [
        C0,
        -C1 * y,
        C1 * z,
        -C1 * x,
        C2_XY * x * y,
        -C2_XY * y * z,
        C2_ZZ * (2 * z * z - x * x - y * y),
        -C2_XY * x * z,
        C2_XX_YY * (x * x - y * y),
    ]


def test_sh_known_values_degrees_0_to_2():
    dirs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, -0.48, 0.64]], np.float32)
    want = np.array([_sh_by_hand(d) for d in dirs.astype(np.float64)])
    for deg in (0, 1, 2):
        got = np.asarray(eval_sh_bases(deg, jnp.asarray(dirs)))
        assert got.shape == (4, (deg + 1) ** 2)
        np.testing.assert_allclose(got, want[:, : (deg + 1) ** 2], rtol=0, atol=1e-6)
    # e.g. along +z: only the constant, the z term and the zz term are non-zero
    np.testing.assert_allclose(
        np.asarray(eval_sh_bases(2, jnp.asarray(dirs[2:3])))[0],
        [C0, 0, C1, 0, 0, 0, 2 * C2_ZZ, 0, 0],
        rtol=0,
        atol=1e-6,
    )


def test_sh_bases_are_orthonormal_on_the_sphere():
    n = 20000  # Fibonacci sphere: near-uniform points
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r = np.sqrt(1 - z * z)
    phi = np.pi * (1 + 5**0.5) * i
    dirs = np.stack([r * np.cos(phi), r * np.sin(phi), z], -1).astype(np.float32)
    Y = np.asarray(eval_sh_bases(2, jnp.asarray(dirs)), np.float64)
    gram = 4 * np.pi * Y.T @ Y / n
    np.testing.assert_allclose(gram, np.eye(9), atol=2e-3)


def test_sh_degree_out_of_range_raises():
    with pytest.raises(ValueError, match="degree"):
        eval_sh_bases(3, jnp.zeros((1, 3)))
