"""Weighted row gathers with a custom VJP that accumulates the table's gradient in float32.

A grid lookup is a weighted gather of rows: a plane flattened to a ``(H * W, C)`` table (channel
last, so each bilinear corner is one contiguous row), ``K`` corner row indices and weights per point
(4 for a plane, 2 for a line), and ``out[p] = sum_k wts[k, p] * table[idx[k, p]]``. Its backward
is a scatter-add of ``K * P`` rows ``g[p] * wts[k, p]`` into the table.

:func:`weighted_rows` gives that operation a custom backward (``jax.custom_vjp``) that

- accumulates into a float32 buffer whatever the table's dtype and the dtype of the incoming
  cotangent (a 16-bit scatter-add compiles to a compare-and-swap loop on NVIDIA GPUs; a float32
  one to native atomic adds), and casts to the table's dtype once at the end;
- writes each corner's gradient as one contiguous row: the scatter indexes the leading axis of the
  ``(N, C)`` buffer and its update window is the trailing channel axis (a window that precedes the
  indexed axis writes strided memory);
- accumulates either with one XLA scatter-add of all corners (``accumulate="scatter"``) or by
  sorting the corner rows by index and summing segments (``accumulate="sorted"``, for measurement:
  no two updates of a segment race, at the price of a sort).

The weights get their cotangent too (``sum_c g * table[idx]``), so gradients reach the coordinates
through the corner arithmetic as they do in the plain lookups; XLA removes that computation when
nothing uses it (a training step differentiates the grids only).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

ACCUMULATE = ("scatter", "sorted")


def gather_rows(table: jax.Array, idx: jax.Array, wts: jax.Array) -> jax.Array:
    """``sum_k wts[k] * table[idx[k]]`` -> (P, C) float32: rows gathered in the table's dtype,
    weighted and summed in float32 (corner by corner, in the order of the plain lookups)."""
    out = None
    for i, w in zip(idx, wts):
        term = table[i].astype(jnp.float32) * w[:, None]
        out = term if out is None else out + term
    return out


def weight_cotangent(table: jax.Array, idx: jax.Array, g: jax.Array) -> jax.Array:
    """The cotangent of the corner weights: ``sum_c g * table[idx[k]]`` -> (K, P) float32."""
    return jnp.stack([jnp.sum(table[i].astype(jnp.float32) * g, axis=-1) for i in idx])


def corner_updates(idx: jax.Array, wts: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The scatter-add's operands: ``K * P`` row indices and float32 rows ``g * w``."""
    K, P = idx.shape
    rows = (wts[:, :, None] * g[None]).reshape(K * P, g.shape[-1])
    return idx.reshape(K * P), rows


def accumulate_rows(n_rows: int, idx: jax.Array, wts: jax.Array, g: jax.Array, accumulate: str) -> jax.Array:
    """The table's gradient, (n_rows, C) float32, accumulated by ``scatter`` or ``sorted``."""
    flat_idx, rows = corner_updates(idx, wts, g)
    if accumulate == "scatter":
        return jnp.zeros((n_rows, g.shape[-1]), jnp.float32).at[flat_idx].add(rows, mode="promise_in_bounds")
    if accumulate == "sorted":
        order = jnp.argsort(flat_idx)
        return jax.ops.segment_sum(rows[order], flat_idx[order], num_segments=n_rows, indices_are_sorted=True)
    raise ValueError(f"accumulate: unknown {accumulate!r}; choose one of {ACCUMULATE}")


def custom_weighted_rows(gather, accumulate):
    """A weighted row gather ``fn(table (N, C), idx (K, P) int32, wts (K, P) float32) -> (P, C)
    float32`` whose forward is ``gather(table, idx, wts)`` and whose backward accumulates the
    table's gradient with ``accumulate(n_rows, idx, wts, g) -> (n_rows, C) float32`` (``g``: the
    cotangent in float32), then casts it to the table's dtype once. The weights' cotangent is
    :func:`weight_cotangent`; the indices get none."""

    @jax.custom_vjp
    def fn(table, idx, wts):
        return gather(table, idx, wts)

    def fwd(table, idx, wts):
        return gather(table, idx, wts), (table, idx, wts)

    def bwd(res, g):
        table, idx, wts = res
        g = g.astype(jnp.float32)
        d_table = accumulate(table.shape[0], idx, wts, g).astype(table.dtype)
        return d_table, None, weight_cotangent(table, idx, g)

    fn.defvjp(fwd, bwd)
    return fn


_BY_ACCUMULATE = {
    name: custom_weighted_rows(gather_rows, functools.partial(accumulate_rows, accumulate=name)) for name in ACCUMULATE
}


def weighted_rows(table: jax.Array, idx: jax.Array, wts: jax.Array, accumulate: str = "scatter") -> jax.Array:
    """``sum_k wts[k] * table[idx[k]]`` for a table (N, C), row indices (K, P) int32 in [0, N) and
    weights (K, P) -> (P, C) float32, with the float32-accumulating backward of this module."""
    if accumulate not in ACCUMULATE:
        raise ValueError(f"accumulate: unknown {accumulate!r}; choose one of {ACCUMULATE}")
    return _BY_ACCUMULATE[accumulate](table, idx, wts.astype(jnp.float32))
