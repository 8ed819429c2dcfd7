"""Float32 arithmetic on the device that gives numpy's results bit for bit, on XLA's CPU and GPU
backends alike.

Set-up decisions (which voxels a silhouette carves away, which rays meet a box or a mask) are
compared with numpy's, and a voxel or ray on a decision boundary has to land on the same side.
Plain jnp code does not reproduce numpy's float32 results:

* XLA contracts a multiply that feeds an add into one fused multiply-add (one rounding where numpy
  rounds twice);
* XLA rewrites a division by a broadcast value into a multiplication by its reciprocal;
* XLA's GPU backend lowers float32 division to ``div.full`` (within 2 ulp, not correctly rounded).

The remedy needs a zero the compiler cannot see: ``nz``, a float32 ``-0.0`` passed into the
compiled function as an argument (:func:`neg_zero`). ``x + nz`` is ``x`` exactly (also for
``x = -0.0``), but the compiler cannot drop it:

* :func:`product` is ``a * b + nz``. Contracted or not, that is ``a * b`` rounded once, and the sum
  it then feeds takes an addition's result, which cannot be contracted with it.
* :func:`divide` and :func:`sqrt` compute in float64 and round to float32: the correctly rounded
  float32 result (rounding twice, to float64 and then to float32, is innocuous for +, -, *, / and
  sqrt when the wider format has at least 2p + 2 bits: 53 >= 2 * 24 + 2). Their float64 operands
  are ``float64(x) + nz``, so that LLVM cannot narrow ``fptrunc(fdiv(fpext a, fpext b))`` back to
  a float32 division. Operands have the same shape (no divide-by-broadcast rewrite).

Additions, subtractions and comparisons need nothing. Denormal results are the one difference
left: XLA flushes them to zero; set-up arithmetic stays far from 1e-38. Float64 needs JAX's x64 mode while such a
function is traced and while it is called: wrap the host-side entry point in :func:`x64`; the
functions here refuse to trace without it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def x64():
    """Context in which float64 arrays exist (JAX's ``enable_x64``); only the functions here use them."""
    return jax.enable_x64(True)


def neg_zero() -> np.float32:
    """The ``nz`` argument of the functions here: pass it into a compiled function as an argument
    (a traced value), never as a constant."""
    return np.float32(-0.0)


def _require_x64(what: str) -> None:
    if not jax.config.x64_enabled:
        raise RuntimeError(f"ieee.{what} needs float64: trace and call it inside `with ieee.x64():`")


def product(a: jax.Array, b: jax.Array, nz: jax.Array) -> jax.Array:
    """``a * b`` rounded to float32 by itself (never fused into a following add)."""
    return a * b + nz


def _wide(x: jax.Array, shape, nz: jax.Array) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(x, jnp.float32), shape).astype(jnp.float64) + nz.astype(jnp.float64)


def divide(a: jax.Array, b: jax.Array, nz: jax.Array) -> jax.Array:
    """Correctly rounded float32 ``a / b`` (IEEE division, as numpy's float32 division)."""
    _require_x64("divide")
    shape = jnp.broadcast_shapes(jnp.shape(a), jnp.shape(b))
    return (_wide(a, shape, nz) / _wide(b, shape, nz)).astype(jnp.float32)


def sqrt(x: jax.Array, nz: jax.Array) -> jax.Array:
    """Correctly rounded float32 square root."""
    _require_x64("sqrt")
    return jnp.sqrt(_wide(x, jnp.shape(x), nz)).astype(jnp.float32)
