"""jax_tensorf.ieee: float32 products, quotients and square roots equal to numpy's bit for bit,
also where XLA would contract, reassociate or approximate, and a refusal without float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_tensorf import ieee


def _operands(n: int = 200_000, seed: int = 0):
    """float32 operands over many binades, with signed zeros and an infinity (no denormals: XLA
    flushes them to zero, numpy does not; set-up arithmetic never comes near 1e-38)."""
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(n) * np.exp(rng.uniform(-20, 20, n))).astype(np.float32)
    b = (rng.standard_normal(n) * np.exp(rng.uniform(-20, 20, n))).astype(np.float32)
    a[:6] = [0.0, -0.0, 1e-30, 3.0, -np.inf, 7.0]
    b[:6] = [-0.0, 5.0, 3.0, 0.0, 2.0, -0.0]
    return a, b


def _same(got, want) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == np.float32
    # bit patterns: equal values, the same signed zeros, NaN where numpy has NaN
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


def test_sum_of_products_rounds_each_product_like_numpy():
    a, b = _operands()
    c, d = _operands(seed=1)
    with ieee.x64():
        f = jax.jit(lambda a, b, c, d, nz: ieee.product(a, b, nz) + ieee.product(c, d, nz))
        got = f(a, b, c, d, ieee.neg_zero())
    with np.errstate(all="ignore"):
        _same(got, a * b + c * d)


def test_division_and_square_root_are_correctly_rounded():
    a, b = _operands()
    with ieee.x64():
        div = jax.jit(lambda a, b, nz: ieee.divide(a, b, nz))(a, b, ieee.neg_zero())
        # a broadcast divisor too (XLA turns x / broadcast(y) into x * (1 / y))
        bdiv = jax.jit(lambda a, b, nz: ieee.divide(a.reshape(-1, 4), b[:4], nz))(a[:4000], b, ieee.neg_zero())
        root = jax.jit(lambda a, nz: ieee.sqrt(jnp.abs(a), nz))(a, ieee.neg_zero())
    with np.errstate(all="ignore"):
        _same(div, a / b)
        _same(bdiv, a[:4000].reshape(-1, 4) / b[:4])
        _same(root, np.sqrt(np.abs(a)))


def test_refuses_to_trace_without_float64():
    with pytest.raises(RuntimeError, match="x64"):
        jax.jit(lambda a, b: ieee.divide(a, b, np.float32(-0.0)))(np.float32(1), np.float32(3))
