"""Group ``lookup``: one plane's bilinear lookup and one line's linear lookup, forward and
forward+backward (``value_and_grad`` w.r.t. the plane or the line), by every variant that computes
single lookups (``flat``, ``gather`` and ``fields.LOOKUP_VARIANTS``: ``vjp``, ``sorted``, ``pallas``;
the vmap group times ``pairs``, ``rays`` and ``samples``, layouts of ``flat`` over the three pairs and
over rays). The plane is the size's grid squared with the appearance field's channels, the line the
size's grid; points uniform in [-1, 1], as many as the size's field forward.

Cases (``bench_sizes.BenchSize.lookup_dtypes``): ``fp32``; ``bf16`` (float32 grid, the result cast
to bf16 after the gather); ``bf16-grid`` (the grid cast to bf16 first: the XLA variants' backward
then scatter-adds in bf16). ``pallas`` is timed only where its kernels are compiled (a GPU); in
interpret mode it runs at the smoke size only (a skip says so elsewhere).

Checked: finite values; in fp32 and bf16 every variant gives ``flat``'s values and gradient
(``<= 1e-4`` resp. ``2e-2`` times the magnitude); in bf16-grid the float32-accumulating variants stay
within 2e-2 of the float32 lookup's values and gradient. Recorded: compile seconds, and every case's
largest deviation from the float32 ``flat`` result (``err_vs_fp32``, relative to its magnitude;
the cost of a 16-bit scatter-add shows there).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import bench_sizes
import bench_workloads as W

jax = pytest.importorskip("jax")
from jax_tensorf import fields  # noqa: E402

KINDS = ("plane", "line")
MODES = ("forward", "forward+backward")
VARIANTS = ("flat", "gather") + fields.LOOKUP_VARIANTS
BOUND = {"fp32": 1e-4, "bf16": 2e-2, "bf16-grid": 2e-2}  # fp32: the parity suite's gradient bound


def _params():
    size = bench_sizes.current_size()
    return [
        pytest.param(kind, variant, mode, dtype, id=f"{kind}-{variant}-{mode}-{dtype}")
        for kind in KINDS
        for dtype in size.lookup_dtypes
        for mode in MODES
        for variant in VARIANTS
    ]


_inputs: dict = {}


def _setup(size, kind: str):
    """(grid, coordinates, cotangent) on the device, built once per size and kind."""
    key = (size.name, kind)
    if key not in _inputs:
        channels = W.experiment(size).field.app_components[0]
        _inputs[key] = jax.device_put(W.lookup_inputs(kind, size.grid, channels, size.points))
    return _inputs[key]


_reference: dict = {}


def _result(fn, args) -> list[np.ndarray]:
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(fn(*args)))]


def _reference_of(size, kind, mode, dtype, args):
    """``flat``'s result for a case (computed once; the fp32 one is the accuracy reference)."""
    key = (size.name, kind, mode, dtype)
    if key not in _reference:
        _reference[key] = _result(jax.jit(W.lookup_function(kind, "flat", mode, dtype)), args)
    return _reference[key]


def _relative_error(got: list, ref: list) -> float:
    return max(W.max_abs(a, b) / max(1e-30, float(np.max(np.abs(b)))) for a, b in zip(got, ref))


@pytest.mark.parametrize(("kind", "variant", "mode", "dtype"), _params())
def test_lookup(benchmark, record, size, jax_info, kind, variant, mode, dtype):
    benchmark.group = "lookup"
    why = W.untimed_variant_reason(variant, size)
    if why:
        pytest.skip(why)
    args = _setup(size, kind)
    t0 = time.perf_counter()
    compiled = jax.jit(W.lookup_function(kind, variant, mode, dtype)).lower(*args).compile(
        compiler_options=W.compiler_options("train", size)
    )
    compile_s = time.perf_counter() - t0
    out = W.run_timed(benchmark, lambda: W.block(compiled(*args)), size)

    got = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(out))]
    assert all(np.all(np.isfinite(x)) for x in got), f"{kind} {variant} {mode} {dtype}: non-finite values"
    fp32 = _reference_of(size, kind, mode, "fp32", args)
    err_fp32 = _relative_error(got, fp32)
    grid, coords, _ = args
    record(
        jax_info,
        framework="jax",
        impl="jax-jit",
        workload=f"{kind}-lookup",
        kind=kind,
        variant=variant,
        mode=mode,
        dtype=dtype,
        label=f"{kind} {variant} {mode} {dtype}",
        grid="x".join(map(str, grid.shape[:-1])),
        channels=int(grid.shape[-1]),
        points=int(coords.shape[0]),
        compile_s=round(compile_s, 3),
        err_vs_fp32=float(f"{err_fp32:.3g}"),
        **W.memory_of(compiled),
    )

    if mode == "forward+backward":
        value, grad = jax.device_get(out)
        assert np.ndim(value) == 0 and grad.shape == grid.shape and grad.dtype == np.float32
        assert float(np.max(np.abs(grad))) > 0, "all-zero gradient"
    if dtype == "bf16-grid":
        if variant in fields.LOOKUP_VARIANTS:
            assert err_fp32 <= BOUND[dtype], f"{kind} {variant} {mode} {dtype}: {err_fp32:.3g} from the fp32 lookup"
    else:
        err = _relative_error(got, _reference_of(size, kind, mode, dtype, args))
        assert err <= BOUND[dtype], f"{kind} {variant} {mode} {dtype} differs from flat by {err:.3g} (relative)"
