"""Group ``precision``: the fp32 / bf16 / fp16 compute policies of ``jax_tensorf.precision``
(parameters stay float32; lookups, feature products and the MLP compute in the reduced type; fp16
steps use dynamic loss scaling), on the field forward, the evaluation render and the train step
(which of them depends on the size). The appearance strategy is ``topk`` with the size's largest k.

Skipped with a reason when jax_tensorf has no precision policies. Checked: finite outputs, and
bf16 / fp16 results within the parity suite's half-precision bounds of the fp32 result
(``|x - x32| <= 2e-2 * max(1, |x32|)`` for bf16, ``5e-3`` for fp16).
"""

from __future__ import annotations

import numpy as np
import pytest

import bench_sizes
import bench_workloads as W

jax = pytest.importorskip("jax")

BOUND = {"fp32": 0.0, "bf16": 2e-2, "fp16": 5e-3}


def _case(size):
    return "topk", size.ks[-1]


def _params():
    size = bench_sizes.current_size()
    out = []
    for workload in size.precision_workloads:  # the size says which (bench_sizes.py)
        for dtype in W.DTYPES:
            out.append(pytest.param(workload, dtype, id=f"{workload}-{dtype}"))
    return out


def _check_close(name, got, ref, dtype):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    assert np.all(np.isfinite(got)), f"{name}: non-finite values in {dtype}"
    if dtype != "fp32":
        err = np.abs(got - ref) / np.maximum(1.0, np.abs(ref))
        assert float(err.max()) <= BOUND[dtype], f"{name}: {dtype} differs from fp32 by {float(err.max()):.3g}"
    return float(np.max(np.abs(got - ref))) if got.size else 0.0


def _compiled(jax_cache, size, workload, dtype):
    strategy, k = _case(size)
    if workload == "field":
        return W.cached_field(jax_cache, size, dtype)
    if workload == "render":
        return W.cached_render(jax_cache, size, strategy, k, dtype)
    return W.cached_train_step(jax_cache, size, strategy, k, dtype)


_fp32: dict = {}


@pytest.mark.parametrize(("workload", "dtype"), _params())
def test_precision(benchmark, record, size, jax_info, jax_cache, workload, dtype):
    benchmark.group = "precision"
    ok, why = W.precision_support()
    if dtype != "fp32" and not ok:
        pytest.skip(why)
    key = (size.name, workload)
    c = _compiled(jax_cache, size, workload, dtype)
    if workload == "train_step":
        # compared: the loss of the first step from the same initial parameters
        out = W.run_timed(benchmark, W.train_loop(c), size)
        assert np.isfinite(float(jax.device_get(out["total"]))), f"{dtype}: non-finite loss"
        value = {"initial_loss": c.info["initial_loss"]}
        ref = {"initial_loss": _compiled(jax_cache, size, workload, "fp32").info["initial_loss"]}
    else:
        out = W.run_timed(benchmark, lambda: W.block(c.compiled(*c.args)), size)
        value = jax.device_get({"sigma": out[0], "rgb": out[1]} if workload == "field" else {"rgb": out["rgb"]})
        if dtype == "fp32":
            _fp32[key] = value
        if key not in _fp32:
            r = _compiled(jax_cache, size, workload, "fp32")
            r = W.block(r.compiled(*r.args))
            _fp32[key] = jax.device_get({"sigma": r[0], "rgb": r[1]} if workload == "field" else {"rgb": r["rgb"]})
        ref = _fp32[key]
    errors = {name: _check_close(f"{workload}.{name}", value[name], ref[name], dtype) for name in value}
    rays = {"field": None, "render": size.render_rays, "train_step": size.rays}[workload]
    strategy, k = _case(size)
    record(
        jax_info,
        framework="jax",
        impl="jax-jit",
        workload=workload,
        dtype=dtype,
        appearance=strategy if workload != "field" else None,
        k=k if workload != "field" else None,
        label=f"{workload} {dtype}",
        rays=rays,
        points=size.points if workload == "field" else None,
        max_abs_vs_fp32=max(errors.values()),
        **c.extra_info(),
    )
