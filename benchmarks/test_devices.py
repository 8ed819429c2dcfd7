"""Group ``devices``: the data-parallel train step (``jax.shard_map`` over a one-axis mesh, rays
split on the batch axis, parameters replicated) on 1, 2 and 4 devices, the same global batch.

On a CPU the devices are host devices (``JAX_NUM_CPU_DEVICES=4``, which ``tensorf-bench bench``
and ``tensorf-bench report`` set for their benchmark process on CPU): they share the same cores,
so this measures the cost of sharding rather than a speed-up. On a machine with several GPUs it
measures the scaling. A count above the devices present is skipped with the reason.

The two-process case runs the same step on two processes with two CPU host devices each
(``devices_worker.py``, JAX's distributed runtime, gradients averaged over gloo): one mesh of four
devices, each process feeding its half of the batch. Each timed round asks both processes for one
step and waits for both (a pipe round trip each, well under a millisecond on one machine). It
runs where the benchmarks run on the CPU backend; on an accelerator it is skipped (its devices
would not compare with the other rows).
Checked: the loss is finite and the same (to float rounding) on every device count and in two
processes, since each device renders its share of one batch and the gradients are averaged.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bench_sizes
import bench_workloads as W

jax = pytest.importorskip("jax")

COUNTS = bench_sizes.current_size().device_counts
_first_loss: dict = {}
WORKER = Path(__file__).resolve().parent / "devices_worker.py"


def _devices(benchmark, record, size, jax_info, n_devices):
    benchmark.group = "devices"
    have = len(jax.devices())
    if have < n_devices:
        pytest.skip(f"{n_devices} devices requested, {have} present (on CPU set JAX_NUM_CPU_DEVICES=4)")
    strategy, k = "topk", size.ks[-1]
    cfg = W.experiment(size, strategy, k)
    c = W.compile_sharded_train_step(cfg, W.grid3(size), size.rays, n_devices, size=size)
    loss0 = float(jax.device_get(c.compiled(*jax.tree.map(lambda x: x.copy(), c.args))[2]["total"]))
    _check_loss(size, loss0, f"{n_devices} devices")
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


def _check_loss(size, loss: float, label: str) -> None:
    assert np.isfinite(loss), f"{label}: non-finite loss"
    _first_loss.setdefault(size.name, loss)
    ref = _first_loss[size.name]
    assert abs(loss - ref) <= 1e-4 * max(1.0, abs(ref)), f"{label}: loss {loss} vs {ref}"


def _expect(worker, prefix: str) -> str:
    """The worker's next output line that starts with ``prefix`` (gloo prints its own lines)."""
    for line in worker.stdout:
        if line.startswith(prefix):
            return line
    pytest.fail(f"a worker stopped (exit {worker.wait(timeout=60)}) before printing {prefix.strip()}")


def _two_processes(benchmark, record, size, jax_info):
    benchmark.group = "devices"
    if jax.default_backend() != "cpu":
        pytest.skip(f"the two-process case runs on CPU host devices; this session runs on {jax.default_backend()}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, TENSORF_BENCH_SIZE=size.name, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2")
    workers = [
        subprocess.Popen([sys.executable, str(WORKER), f"127.0.0.1:{port}", str(i), "2", "4"], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    try:
        ready = [json.loads(_expect(w, "READY ")[len("READY "):]) for w in workers]
        for r in ready:
            assert r["local_devices"] == 2
            _check_loss(size, r["loss"], "2 processes x 2 devices")

        def step():
            for w in workers:
                w.stdin.write("step\n")
                w.stdin.flush()
            for w in workers:
                _expect(w, "OK")

        W.run_timed(benchmark, step, size)
    finally:
        for w in workers:
            if w.poll() is None:
                w.stdin.close()
        for w in workers:
            try:
                w.wait(timeout=60)
            except subprocess.TimeoutExpired:
                w.kill()
    info = {k: v for k, v in ready[0].items() if k not in ("loss", "local_devices")}
    record(
        jax_info,
        framework="jax",
        impl="jax-shard_map-2proc",
        workload="train_step",
        appearance="topk",
        k=size.ks[-1],
        label="train_step 2 processes x 2 devices",
        rays=size.rays,
        processes=2,
        **info,
    )


# A size without device counts (or without the two-process case) collects no such test.
if COUNTS:
    test_devices = pytest.mark.parametrize("n_devices", COUNTS, ids=[f"{n}dev" for n in COUNTS])(_devices)
if bench_sizes.current_size().two_processes:
    test_devices_two_processes = _two_processes
