"""Peak memory of one workload, measured in a fresh process (run by ``test_memory.py``).

``python benchmarks/memory_probe.py FRAMEWORK WORKLOAD`` (with ``TENSORF_BENCH_SIZE`` set) builds the
workload of ``test_framework.py`` (the same shapes, appearance ``all``), compiles it (JAX), then
resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), runs it ``rounds + 1`` times and
prints one JSON object:

- ``rss_before_bytes``: resident memory after building and compiling, before the first run;
- ``peak_rss_bytes``: the peak resident memory during them (``VmHWM``; ``ru_maxrss`` of the whole
  process where the mark cannot be reset, flagged by ``hwm_reset: false``);
- ``cuda_peak_bytes`` (torch on CUDA: ``torch.cuda.max_memory_allocated`` over the runs) or
  ``device_peak_bytes`` (JAX on an accelerator: ``peak_bytes_in_use`` of the device, process-wide);
- JAX: the compiled memory analysis (``temp_bytes``, ``argument_bytes``, ``output_bytes``...).
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sizes  # noqa: E402
import bench_workloads as W  # noqa: E402


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _workload(framework: str, workload: str, size):
    cfg = W.experiment(size, "all")
    grid = W.grid3(size)
    info: dict = {}
    if framework == "jax":
        if workload == "train_step":
            c = W.compile_train_step(cfg, grid, size.rays, size=size)
            fn = W.train_loop(c)
        else:
            c = W.compile_render(cfg, grid, size.render_rays, size=size)
            fn = lambda: W.block(c.compiled(*c.args))  # noqa: E731
        info.update(c.memory)
        return fn, info
    import torch

    from tensorf_common.geometry import train_n_samples
    from torch_reference.step import LossWeights, make_optimizer, train_step

    model = W.torch_model(cfg, grid)
    if workload == "train_step":
        opt = make_optimizer(model, cfg.train)
        o, d = W.make_rays(size.rays, seed=2)
        rays = W.torch_rays(o, d)
        rgbs = torch.rand(size.rays, 3, generator=torch.Generator().manual_seed(3)).to(rays.device)
        n = train_n_samples(grid, cfg.render.step_ratio, cfg.render.max_samples)

        def fn():
            out = train_step(model, opt, rays, rgbs, LossWeights(l1=cfg.train.l1_weight_initial), n_samples=n)
            W.torch_sync()
            return out
    else:
        o, d = W.make_rays(size.render_rays, seed=4)
        rays = W.torch_rays(o, d)

        def fn():
            with torch.no_grad():
                out = model.render(rays, white_bg=True, is_train=False, N_samples=int(model.nSamples))
            W.torch_sync()
            return out
    return fn, info


def main(argv) -> int:
    framework, workload = argv[1], argv[2]
    rounds = int(argv[3]) if len(argv) > 3 else 2
    size = bench_sizes.current_size()
    fn, info = _workload(framework, workload, size)
    cuda = False
    if framework == "torch":
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
    # built and compiled: from here on, only what running the workload needs (the first run's
    # allocations included) raises the peak
    rss_before = _status_kib("VmRSS") * 1024
    reset = _reset_hwm()
    for _ in range(rounds + 1):
        fn()
    out = dict(info)
    out["rss_before_bytes"] = rss_before
    out["hwm_reset"] = reset
    out["peak_rss_bytes"] = _status_kib("VmHWM") * 1024 if reset else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    out["rounds"] = rounds
    if cuda:
        import torch

        out["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    if framework == "jax":
        from jax_tensorf.xla import device_peak_bytes

        out.update(device_peak_bytes())
    from tensorf_common.runtime import active_allocator

    out["allocator"] = active_allocator()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
