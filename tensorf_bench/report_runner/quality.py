"""The quality-run child process: one quality run described by ``job.json`` (JAX through
``jax_tensorf.run.train_run``, torch through ``torch_reference.training.train`` with
``wall_clock=True`` and ``torch_reference.evaluation``), its run.json next to it, its renders pruned.
Started as ``python -m tensorf_bench.report_runner quality JOB.json``; it prints its progress as
:data:`~.children.PROGRESS_PREFIX` lines."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from tensorf_bench.report.io import atomic_write_json

from .children import PROGRESS_PREFIX
from .run import ReportError


def _emit(**kw) -> None:
    print(PROGRESS_PREFIX + json.dumps(kw), flush=True)


def _prune(out_dir: Path, keep_models: bool, keep_renders: bool, figure_views: Sequence[str]) -> None:
    if not keep_models:
        for name in ("checkpoint.npz", "model.npz", "model.th", "checkpoint.th"):
            p = out_dir / name
            if p.exists():
                p.unlink()
    if not keep_renders:
        keep = {f"{v}.png" for v in figure_views}
        for folder in (out_dir / "eval", out_dir / "eval" / "depth"):
            if folder.is_dir():
                for p in folder.glob("*.png"):
                    if p.name not in keep or folder.name == "depth":
                        p.unlink()


def _quality_jax(job: dict, cfg, out_dir: Path) -> dict:
    from jax_tensorf.run import train_run

    def on_log(point):
        _emit(step=point.step, elapsed=point.elapsed, psnr=point.psnr)

    # the summary names the device (jax_tensorf.xla.device_info); no TensorBoard files in a report
    return train_run(cfg, job["data_dir"], out_dir, evaluate=True, lpips=job.get("lpips", True), progress=False,
                     on_log=on_log, tensorboard=False)


def _quality_torch(job: dict, cfg, out_dir: Path) -> dict:
    from tensorf_common.runtime import peak_rss_bytes

    import numpy as np
    import torch

    from tensorf_common.data.blender import load_from_config
    from torch_reference.evaluation import evaluate_split
    from torch_reference.training import train

    # Library start-up is not training: the first torch.optim.Adam imports torch._dynamo (seconds),
    # as importing jax happens before the JAX trainer's clock starts.
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    t_load = time.perf_counter()
    ds = load_from_config(job["data_dir"], cfg.data, ("train", "test"))
    load_seconds = time.perf_counter() - t_load
    clock = time.perf_counter()  # the budget clock: set-up (carving, ray filtering) counts, as in JAX
    tc = cfg.train
    aabb = np.asarray(ds.aabb, np.float32)
    events: list[dict] = []
    initial_mask = None
    if tc.box == "carve":
        from tensorf_common.bounds import carve_visual_hull

        occ, tight = carve_visual_hull(ds["train"], aabb, tc.carve_resolution)
        events.append({"event": "carve", "aabb": np.asarray(tight).tolist(), "from": aabb.tolist()})
        if tc.carve_as_mask:
            initial_mask = (np.ascontiguousarray(np.transpose(occ, (2, 1, 0))), aabb)
        aabb = np.asarray(tight, np.float32)

    class TimedSplit:
        """The training split, noting when the first batch is drawn (the end of set-up)."""

        def __init__(self, split):
            self.split = split
            self.first_batch: Optional[float] = None

        @property
        def n_rays(self):
            return self.split.n_rays

        def rays(self, idx):
            return self.split.rays(idx)

        def batch(self, idx):
            if self.first_batch is None:
                self.first_batch = time.perf_counter()
            return self.split.batch(idx)

    data = TimedSplit(ds["train"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(tc.seed)

    def on_log(entry):
        _emit(step=entry["step"], elapsed=entry["elapsed"], psnr=entry["psnr"])

    result = train(cfg.field, cfg.render, tc, data, aabb=aabb, near_far=ds.near_far, white_bg=ds.white_bg,
                   device=device, initial_mask=initial_mask, on_log=on_log, wall_clock=True, clock_start=clock)
    if device == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - clock
    setup = (data.first_batch - clock) if data.first_batch else None
    steps = result.history[-1]["step"] if result.history else 0
    model = result.model
    if job.get("keep_models"):
        model.save(out_dir / "model.th")
    test = ds["test"]
    results, render_s = evaluate_split(model, test, out_dir / "eval", lpips=job.get("lpips", True),
                                       progress=lambda i, n: _emit(phase="eval", done=i, of=n))
    busy = train_seconds - (setup or 0.0)
    summary = {
        "framework": "torch",
        "data": str(job["data_dir"]),
        "config": cfg.to_dict(),
        "steps": steps,
        "train_seconds": round(train_seconds, 3),
        "load_seconds": round(load_seconds, 3),
        "setup_seconds": round(setup, 3) if setup is not None else None,
        "grid_size": [int(g) for g in model.gridSize.tolist()],
        "aabb": model.aabb.cpu().numpy().tolist(),
        "compiles": [],
        "events": events + result.events,
        "history": result.history,
        "rays_per_s": round(steps * tc.batch_size / busy, 1) if steps and busy > 0 else None,
        "eval": results.to_json_dict(),
        "eval_render_seconds": round(render_s, 3),
        "peak_rss_bytes": peak_rss_bytes(),
        "device": device if device == "cpu" else f"cuda:{torch.cuda.get_device_name(0)}",
    }
    if device == "cuda":
        summary["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    atomic_write_json(out_dir / "run.json", summary)
    return summary


def quality_main(job_path: str) -> int:
    """Child process: one quality run described by ``job.json``; writes run.json next to it."""
    from tensorf_common.config import ExperimentConfig

    job = json.loads(Path(job_path).read_text())
    cfg = ExperimentConfig.from_dict(job["config"])
    out_dir = Path(job["out_dir"])
    spec = job["spec"]
    print(f"quality run {spec['name']} ({spec['framework']}), budget {cfg.train.minutes} min, data {job['data_dir']}",
          flush=True)
    if spec["framework"] == "jax":
        summary = _quality_jax(job, cfg, out_dir)
    elif spec["framework"] == "torch":
        summary = _quality_torch(job, cfg, out_dir)
    else:
        raise ReportError(f"quality run {spec['name']}: unknown framework {spec['framework']!r}")
    summary["budget_s"] = 60.0 * cfg.train.minutes
    summary["spec"] = spec
    atomic_write_json(out_dir / "run.json", summary)
    _prune(out_dir, job.get("keep_models", False), job.get("keep_renders", False), job.get("figure_views", []))
    mean = (summary.get("eval") or {}).get("mean", {})
    print(f"done: {summary.get('steps')} steps in {summary.get('train_seconds')} s, test PSNR {mean.get('psnr')}", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "quality":
        return quality_main(args[1])
    print("usage: python -m tensorf_bench.report_runner quality JOB.json", file=sys.stderr)
    return 2
