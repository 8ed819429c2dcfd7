"""Group ``memory``: peak memory of a train step and an evaluation render (the framework group's
work, appearance ``all``) in JAX and in the torch reference.

Each measurement runs in a fresh process (``memory_probe.py``), so earlier tests do not inflate it:
peak resident memory during the runs (both frameworks, CPU), the CUDA peak (torch on a GPU), the
device peak (JAX on an accelerator), and for JAX the compiled memory analysis. The timed figure is
the probe's wall time (start-up and compilation included): not a throughput.

Checked: the probe ran, its numbers are positive and the peak is at least the resident memory
before the runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bench_sizes

PROBE = Path(__file__).resolve().parent / "memory_probe.py"


def _params():
    size = bench_sizes.current_size()
    return [pytest.param(fw, w, id=f"{w}-{fw}") for w in size.memory_workloads for fw in ("jax", "torch")]


def _memory(benchmark, record, size, framework, workload):
    benchmark.group = "memory"
    pytest.importorskip(framework)
    result: dict = {}

    def probe():
        env = dict(os.environ, TENSORF_BENCH_SIZE=size.name)
        out = subprocess.run([sys.executable, str(PROBE), framework, workload], capture_output=True, text=True,
                             env=env, timeout=900)
        if out.returncode != 0:
            tail = [ln for ln in (out.stderr or out.stdout).splitlines() if ln.strip()][-1:]
            raise AssertionError(f"memory probe failed ({out.returncode}): {tail[0] if tail else ''}")
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(probe, rounds=1, warmup_rounds=0, iterations=1)
    if framework == "jax":
        import bench_workloads as W

        dev = W.jax_device_info()
    else:
        import bench_workloads as W

        dev = W.torch_device_info()
    record(
        dev,
        framework=framework,
        impl="jax-jit" if framework == "jax" else "torch-eager",
        workload=f"memory_{workload}",
        appearance="all",
        dtype="fp32",
        label=f"{workload} {framework}",
        rays=size.rays if workload == "train_step" else size.render_rays,
        grid="x".join(map(str, W.grid3(size))),
        timing="probe wall time (not a throughput)",
        **{k: v for k, v in result.items() if k != "allocator"},
        probe_allocator=result.get("allocator"),
    )
    assert result["peak_rss_bytes"] > 0 and result["rss_before_bytes"] > 0
    assert result["peak_rss_bytes"] >= result["rss_before_bytes"] * 0.9
    result["peak_delta_bytes"] = result["peak_rss_bytes"] - result["rss_before_bytes"]
    benchmark.extra_info["peak_delta_bytes"] = result["peak_delta_bytes"]


if _params():  # a size without memory workloads collects none
    test_memory = pytest.mark.parametrize(("framework", "workload"), _params())(_memory)
