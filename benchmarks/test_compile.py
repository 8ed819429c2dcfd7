"""Group ``compile``: JAX compile time per grid size, for the train step and the evaluation render.

Each round lowers and compiles a fresh function (nothing is reused from an earlier trace or
compilation), outside any execution; ``extra_info`` holds the median ``lower_s`` and ``compile_s``
(XLA) of the rounds; the timed figure is lowering + compilation. At the smoke size XLA's CPU backend
optimisation is lowered to level 0 (``fast_compile``), so smoke compile times are not the real ones.

Checked: the compiled function runs and gives finite results of the right shapes.
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest

import bench_sizes
import bench_workloads as W

jax = pytest.importorskip("jax")


def _params():
    size = bench_sizes.current_size()
    return [pytest.param(workload, grid, id=f"{workload}-{grid}") for workload in size.compile_workloads
            for grid in size.compile_grids]


@pytest.mark.parametrize(("workload", "grid"), _params())
def test_compile(benchmark, record, size, jax_info, workload, grid):
    benchmark.group = "compile"
    cfg = W.experiment(size, "topk", size.ks[-1])
    rounds: list = []

    def target():
        if workload == "train_step":
            c = W.compile_train_step(cfg, [grid] * 3, size.rays, fresh=True, size=size)
        else:
            c = W.compile_render(cfg, [grid] * 3, size.render_rays, fresh=True, size=size)
        rounds.append(c)
        return c

    benchmark.pedantic(target, rounds=1 if size.rounds < 5 else 2, warmup_rounds=0, iterations=1)
    c = rounds[-1]
    record(
        jax_info,
        framework="jax",
        impl="jax-jit",
        workload=f"compile_{workload}",
        appearance="topk",
        k=size.ks[-1],
        dtype="fp32",
        label=f"{workload} {grid}^3",
        rays=size.rays if workload == "train_step" else size.render_rays,
        lower_s=round(statistics.median(r.lower_s for r in rounds), 3),
        compile_s=round(statistics.median(r.compile_s for r in rounds), 3),
        fast_compile=bool(size.fast_compile),
        **c.info,
        **c.memory,
    )
    if workload == "train_step":
        metrics = W.train_loop(c)()
        assert np.isfinite(float(metrics["total"]))
    else:
        out = W.block(c.compiled(*c.args))
        rgb = np.asarray(out["rgb"])
        assert rgb.shape == (size.render_rays, 3) and np.all(np.isfinite(rgb))
    assert c.compile_s > 0 and c.lower_s > 0
