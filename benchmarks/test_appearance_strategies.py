"""Group ``appearance``: which samples get appearance (``RenderConfig.appearance``): ``all``,
``threshold`` (the cpu preset's compacted capacity), ``topk`` for each k of the size and ``sample``;
one JAX train step and one evaluation render of a chunk of rays each.

Checked: a finite loss, and the train step changes the parameters; every render has the depth of
the ``all`` render (the strategy does not change the weights), and ``threshold`` and ``topk`` (a
subset of the samples) are nowhere brighter than ``all``, with the number of samples they selected;
``topk`` with k >= samples per ray would equal ``all`` (covered by the parity suite).
"""

from __future__ import annotations

import numpy as np
import pytest

import bench_sizes
import bench_workloads as W

jax = pytest.importorskip("jax")


def _cases(which: str):
    size = bench_sizes.current_size()
    out = []
    for strategy, k in size.strategy_cases:
        label = bench_sizes.case_label(strategy, k)
        if which == "train_step" and size.train_strategies is not None and label not in size.train_strategies:
            continue
        out.append(pytest.param(strategy, k, id=label))
    return out


def _train_step(benchmark, record, size, jax_info, jax_cache, strategy, k):
    benchmark.group = "appearance"
    c = W.cached_train_step(jax_cache, size, strategy, k)
    before = np.asarray(jax.device_get(c.args[0]["density"]["lines"][0]))
    metrics = W.run_timed(benchmark, W.train_loop(c), size)
    record(
        jax_info,
        framework="jax",
        impl="jax-jit",
        workload="train_step",
        appearance=strategy,
        k=k,
        dtype="fp32",
        label=bench_sizes.case_label(strategy, k),
        rays=size.rays,
        **c.extra_info(),
    )
    m = jax.device_get(metrics)
    assert np.isfinite(float(m["total"])) and bool(m["finite"]), f"non-finite step: {m['total']}"
    after = np.asarray(jax.device_get(c.args[0]["density"]["lines"][0]))
    assert after.shape == before.shape and not np.array_equal(after, before), "the step did not update the grids"


@pytest.mark.parametrize(("strategy", "k"), _cases("render"))
def test_render(benchmark, record, size, jax_info, jax_cache, strategy, k):
    benchmark.group = "appearance"
    c = W.cached_render(jax_cache, size, strategy, k)
    out = W.run_timed(benchmark, lambda: W.block(c.compiled(*c.args)), size)
    record(
        jax_info,
        framework="jax",
        impl="jax-jit",
        workload="render",
        appearance=strategy,
        k=k,
        dtype="fp32",
        label=bench_sizes.case_label(strategy, k),
        rays=size.render_rays,
        **c.extra_info(),
    )
    out = jax.device_get(out)
    assert out["rgb"].shape == (size.render_rays, 3) and np.all(np.isfinite(out["rgb"]))
    ref = _render_all(jax_cache, size)
    # The strategy only chooses which samples get appearance: the weights, so the depth, are those of `all`.
    np.testing.assert_allclose(out["depth"], ref["depth"], rtol=1e-5, atol=1e-5)
    n = c.info["samples_per_ray"]
    if strategy in ("threshold", "topk"):
        # A subset of the samples with colours in [0, 1] adds up to at most what all of them do (on
        # white, the background term is the same for both).
        assert np.all(out["rgb"] <= ref["rgb"] + 1e-5), float(np.max(out["rgb"] - ref["rgb"]))
        selected, every = int(out["stats"]["app_samples"]), int(ref["stats"]["app_samples"])
        if strategy == "topk" and k < n:
            assert selected == size.render_rays * k
        else:  # an untrained field may have no weight above the threshold: 0 is allowed
            assert 0 <= selected <= every


def _render_all(jax_cache, size) -> dict:
    """The `all` strategy's render of the same rays with the same parameters (once per size)."""
    key = ("render-out", size.name, "all")
    if key not in jax_cache:
        c = W.cached_render(jax_cache, size, "all", None)
        jax_cache[key] = jax.device_get(c.compiled(*c.args))
    return jax_cache[key]


if _cases("train_step"):  # a size without train-step strategies collects none
    test_train_step = pytest.mark.parametrize(("strategy", "k"), _cases("train_step"))(_train_step)
