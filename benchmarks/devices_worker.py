"""One process of the ``devices`` group's two-process case (run by ``test_devices.py``).

``python benchmarks/devices_worker.py HOST:PORT PROCESS_ID N_PROCESSES N_DEVICES`` (with
``TENSORF_BENCH_SIZE`` set, and the process's own devices chosen by the caller's environment) joins
the distributed run (``jax_tensorf.distributed.initialize``), compiles the group's data-parallel
train step over the mesh of every process's devices (``bench_workloads.compile_sharded_train_step``:
the same global batch as the single-process cases, each process feeding its rows), runs it once,
and prints ``READY {json}`` (compile seconds, the first loss). Then, for each ``step`` line on
stdin, it runs one step, blocks on it and prints ``OK``; ``quit`` (or the end of stdin) ends it.
The caller times the steps from outside: every process must run each step (its collectives join
them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sizes  # noqa: E402
import bench_workloads as W  # noqa: E402


def main(coordinator: str, index: int, count: int, n_devices: int) -> None:
    from jax_tensorf.distributed import initialize

    initialize(coordinator, count, index, timeout=120)
    import jax

    size = bench_sizes.current_size()
    cfg = W.experiment(size, "topk", size.ks[-1])
    c = W.compile_sharded_train_step(cfg, W.grid3(size), size.rays, n_devices, size=size)
    loss = float(jax.device_get(c.compiled(*jax.tree.map(lambda x: x.copy(), c.args))[2]["total"]))
    step = W.train_loop(c)
    print("READY " + json.dumps({"loss": loss, **c.extra_info(), "local_devices": jax.local_device_count()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        step()
        print("OK", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
