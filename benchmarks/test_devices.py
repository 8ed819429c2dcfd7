"""Group ``devices``: the data-parallel train step (``jax.shard_map`` over a one-axis mesh, rays
split on the batch axis, parameters replicated) on 1, 2 and 4 devices, the same global batch.

On a CPU the devices are host devices (``JAX_NUM_CPU_DEVICES=4``, which ``tensorf-bench bench``
and ``tensorf-bench report`` set for their benchmark process on CPU): they share the same cores,
so this measures the cost of sharding rather than a speed-up. On a machine with several GPUs it
measures the scaling. A count above the devices present is skipped with the reason.
Checked: the loss is finite and the same (to float rounding) on every device count, since each
device renders its share of one batch and the gradients are averaged.
"""

from __future__ import annotations

import numpy as np
import pytest

import bench_workloads as W

jax = pytest.importorskip("jax")

COUNTS = (1, 2, 4)
_first_loss: dict = {}


@pytest.mark.parametrize("n_devices", COUNTS, ids=[f"{n}dev" for n in COUNTS])
def test_devices(benchmark, record, size, jax_info, n_devices):
    benchmark.group = "devices"
    have = len(jax.devices())
    if have < n_devices:
        pytest.skip(f"{n_devices} devices requested, {have} present (on CPU set JAX_NUM_CPU_DEVICES=4)")
    strategy, k = "topk", size.ks[-1]
    cfg = W.experiment(size, strategy, k)
    c = W.compile_sharded_train_step(cfg, W.grid3(size), size.rays, n_devices, size=size)
    loss0 = float(jax.device_get(c.compiled(*jax.tree.map(lambda x: x.copy(), c.args))[2]["total"]))
    assert np.isfinite(loss0), f"{n_devices} devices: non-finite loss"
    _first_loss.setdefault(size.name, loss0)
    ref = _first_loss[size.name]
    assert abs(loss0 - ref) <= 1e-4 * max(1.0, abs(ref)), f"{n_devices} devices: loss {loss0} vs {ref}"
    out = W.run_timed(benchmark, W.train_loop(c), size)
    assert np.isfinite(float(jax.device_get(out["total"])))
    record(
        jax_info,
        framework="jax",
        impl="jax-shard_map",
        workload="train_step",
        appearance=strategy,
        k=k,
        label=f"train_step {n_devices} device(s)",
        rays=size.rays,
        **c.extra_info(),
    )
