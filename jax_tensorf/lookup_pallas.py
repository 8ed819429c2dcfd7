"""Pallas kernels for the weighted row gather of a grid lookup and its atomic-add backward.

The operation is the one of :mod:`jax_tensorf.lookup_vjp`: ``out[p] = sum_k wts[k, p] *
table[idx[k, p]]`` for a channel-last table ``(N, C)`` (a plane flattened to ``H * W`` rows, or a
line), with ``K`` corners per point computed outside the kernel by the same corner arithmetic as
every other lookup (so the values agree to the last bit of the weights). Each program of the
kernels handles a block of points:

- forward: for each corner, one gather of ``(block, C)`` table rows, weighted and summed in float32;
- backward: for each corner, ``g * w`` added into a float32 ``(N, C_pad)`` buffer with atomic adds,
  one contiguous row per point and corner (PyTorch's ``grid_sample`` backward issues one atomic add
  per corner in the same way), whatever the dtype of the table or of the cotangent.

Backend: on a GPU the kernels are lowered by Pallas' Triton backend (``jax.experimental.pallas.
triton``; ``plt.atomic_add`` becomes Triton's ``tt.atomic_rmw fadd`` on float32). Jax 0.11 marks
that backend deprecated in favour of Mosaic GPU, whose ``atomic_add`` (0.10-0.11) stores a whole
tile of a reference, not rows at per-lane indices, so a scatter like this one has no direct Mosaic
GPU form yet; the Triton form is used while jax ships it. Everywhere else the kernels run in Pallas'
interpret mode (``interpret=True``), which is how the CPU tests cover them. Interpret mode applies an
atomic add of a block as a read, add and write of all its rows at once, so two points of one block
that hit the same row would lose one update: interpret mode therefore runs the backward with blocks
of one point (distinct addresses within each atomic add), and the GPU with larger blocks.

Triton needs power-of-two tile shapes: channels are padded to the next power of two (loads read a
repeated last channel, the float32 gradient buffer has ``C_pad`` columns and is cut back to ``C``).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from .lookup_vjp import custom_weighted_rows

BLOCK_POINTS = 128
"""Points per program on a GPU (forward and backward)."""
NUM_WARPS = 4
"""Warps per program on a GPU."""


def interpret_default() -> bool:
    """Interpret mode unless JAX's default backend is a GPU (where the Triton backend lowers the
    kernels)."""
    return jax.default_backend() != "gpu"


def _compiler_params(interpret: bool):
    if interpret:
        return None
    from jax.experimental.pallas import triton as plt

    return plt.CompilerParams(num_warps=NUM_WARPS)


def _pad_points(idx: jax.Array, wts: jax.Array, block: int):
    """Pad the point axis to a multiple of ``block`` with row 0 and weight 0 (adds nothing)."""
    P = idx.shape[1]
    pad = -P % block
    if pad:
        idx = jnp.pad(idx, ((0, 0), (0, pad)))
        wts = jnp.pad(wts, ((0, 0), (0, pad)))
    return idx, wts


def _gather_kernel(idx_ref, wts_ref, table_ref, out_ref, *, block: int, channels: int, padded: int):
    points = pl.program_id(0) * block + jnp.arange(block)
    lanes = jnp.minimum(jnp.arange(padded), channels - 1)  # padded lanes repeat the last channel
    acc = None
    for k in range(idx_ref.shape[0]):
        rows = idx_ref[k, points]
        w = wts_ref[k, points]
        term = table_ref[rows[:, None], lanes[None, :]].astype(jnp.float32) * w[:, None]
        acc = term if acc is None else acc + term
    out_ref[points[:, None], lanes[None, :]] = acc  # repeated lanes store equal values


def _scatter_kernel(idx_ref, wts_ref, g_ref, zeros_ref, grad_ref, *, block: int, channels: int, padded: int):
    from jax.experimental.pallas import triton as plt

    del zeros_ref  # aliased to grad_ref: the buffer the atomic adds accumulate into
    points = pl.program_id(0) * block + jnp.arange(block)
    lanes = jnp.arange(padded)
    g = g_ref[points[:, None], jnp.minimum(lanes, channels - 1)[None, :]]
    g = jnp.where(lanes[None, :] < channels, g, 0.0)
    for k in range(idx_ref.shape[0]):
        rows = idx_ref[k, points]
        w = wts_ref[k, points]
        plt.atomic_add(grad_ref, (rows[:, None], lanes[None, :]), g * w[:, None])


def pallas_gather(
    table: jax.Array, idx: jax.Array, wts: jax.Array, *, interpret: Optional[bool] = None, debug: bool = False
) -> jax.Array:
    """Forward kernel: ``sum_k wts[k] * table[idx[k]]`` -> (P, C) float32."""
    interpret = interpret_default() if interpret is None else interpret
    P = idx.shape[1]
    C = table.shape[1]
    block = BLOCK_POINTS
    idx, wts = _pad_points(idx, wts, block)
    kernel = functools.partial(_gather_kernel, block=block, channels=C, padded=pl.next_power_of_2(C))
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((idx.shape[1], C), jnp.float32),
        grid=(idx.shape[1] // block,),
        interpret=interpret,
        compiler_params=_compiler_params(interpret),
        name="grid_lookup_gather",
        debug=debug,
    )(idx, wts, table)
    return out if out.shape[0] == P else out[:P]


def pallas_accumulate(
    n_rows: int, idx: jax.Array, wts: jax.Array, g: jax.Array, *, interpret: Optional[bool] = None, debug: bool = False
) -> jax.Array:
    """Backward kernel: the table's gradient ``sum over (k, p) with idx[k, p] = n of wts[k, p] *
    g[p]`` -> (n_rows, C) float32, by atomic adds into a float32 buffer."""
    interpret = interpret_default() if interpret is None else interpret
    C = g.shape[1]
    padded = pl.next_power_of_2(C)
    block = 1 if interpret else BLOCK_POINTS
    idx, wts = _pad_points(idx, wts, block)
    if g.shape[0] != idx.shape[1]:
        g = jnp.pad(g, ((0, idx.shape[1] - g.shape[0]), (0, 0)))
    kernel = functools.partial(_scatter_kernel, block=block, channels=C, padded=padded)
    grad = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((n_rows, padded), jnp.float32),
        grid=(idx.shape[1] // block,),
        input_output_aliases={3: 0},
        interpret=interpret,
        compiler_params=_compiler_params(interpret),
        name="grid_lookup_scatter_add",
        debug=debug,
    )(idx, wts, g.astype(jnp.float32), jnp.zeros((n_rows, padded), jnp.float32))
    return grad if padded == C else grad[:, :C]


def make_weighted_rows(interpret: Optional[bool] = None, debug: bool = False):
    """``weighted_rows(table, idx, wts)`` by these kernels, forward and backward (a custom VJP,
    :func:`jax_tensorf.lookup_vjp.custom_weighted_rows`). ``interpret``: None = interpret mode
    unless the default backend is a GPU; False lowers the Triton kernels whatever the host (a CPU
    can lower them for a GPU platform, not run them). ``debug``: Pallas prints each kernel's jaxpr
    and, lowered for a GPU, its Triton module."""
    kw = dict(interpret=interpret, debug=debug)
    return custom_weighted_rows(functools.partial(pallas_gather, **kw), functools.partial(pallas_accumulate, **kw))


weighted_rows = make_weighted_rows()
"""``sum_k wts[k] * table[idx[k]]`` -> (P, C) float32 by the Pallas kernels (backend chosen at trace time)."""
