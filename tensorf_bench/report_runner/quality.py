"""The quality-run child process: one quality run described by ``job.json`` (through
``jax_tensorf.run.train_run`` or ``torch_reference.run.train_run``), its run.json next to it (with
the report's ``budget_s`` and ``spec``), its renders and model files pruned.
Started as ``python -m tensorf_bench.report_runner quality JOB.json``; it prints its progress as
:data:`~.children.PROGRESS_PREFIX` lines."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from tensorf_common.run_summary import write_run_summary

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


def _quality_run(framework: str, job: dict, cfg, out_dir: Path) -> dict:
    """One run through the framework's ``train_run`` (the same run folder and run.json keys)."""
    if framework == "jax":
        from jax_tensorf.run import train_run
    else:
        from torch_reference.run import train_run

    def on_log(point):  # a LogPoint (JAX) or a dict of its fields (torch)
        p = point if isinstance(point, dict) else dataclasses.asdict(point)
        _emit(step=p["step"], elapsed=p["elapsed"], psnr=p["psnr"])

    # no TensorBoard files in a report
    return train_run(cfg, job["data_dir"], out_dir, evaluate=True, lpips=job.get("lpips", True), progress=False,
                     on_log=on_log, tensorboard=False)


def quality_main(job_path: str) -> int:
    """Child process: one quality run described by ``job.json``; writes run.json next to it."""
    from tensorf_common.config import ExperimentConfig

    job = json.loads(Path(job_path).read_text())
    cfg = ExperimentConfig.from_dict(job["config"])
    out_dir = Path(job["out_dir"])
    spec = job["spec"]
    print(f"quality run {spec['name']} ({spec['framework']}), budget {cfg.train.minutes} min, data {job['data_dir']}",
          flush=True)
    if spec["framework"] not in ("jax", "torch"):
        raise ReportError(f"quality run {spec['name']}: unknown framework {spec['framework']!r}")
    summary = _quality_run(spec["framework"], job, cfg, out_dir)
    summary["budget_s"] = 60.0 * cfg.train.minutes
    summary["spec"] = spec
    write_run_summary(out_dir, summary)
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
