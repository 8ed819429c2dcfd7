"""The stages of a report run: machine, data, bench, one per quality run, parity. A stage function
takes the run's :class:`Context` and returns (status, one-line error or None, data)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tensorf_bench.report.io import StageRecord, atomic_write_json, read_json, read_stage
from tensorf_bench.report.presets import QualitySpec, ReportPreset

from .children import PROGRESS_PREFIX, REPO_ROOT, child_env, error_line, run_child
from .progress import Progress


@dataclass
class Stage:
    name: str
    kind: str
    estimate_s: float
    fn: Callable[["Context"], tuple[str, Optional[str], dict]]
    """Returns (status, one-line error or None, data); an exception fails the stage."""


@dataclass
class Context:
    run_dir: Path
    preset: ReportPreset
    data: Optional[str]
    progress: Progress
    options: dict = field(default_factory=dict)

    def log_path(self, stage: str) -> Path:
        return self.run_dir / "logs" / f"{stage}.log"


def stage_machine(ctx: Context):
    from tensorf_bench.report.machine import machine_info

    ctx.progress.update(text="collecting")
    info = machine_info(REPO_ROOT)
    return "ok", None, info


def stage_data(ctx: Context):
    from tensorf_common.data.blender import load_from_config
    from tensorf_common.data.scene_cache import resolve_data_dir
    from tensorf_common.images import to_uint8, write_png

    procedural = ctx.data is None
    if procedural:
        from tensorf_common.data.scene_cache import scene_cache_dir
        from tensorf_common.scene import SCENE_MARKER

        if not (scene_cache_dir() / SCENE_MARKER).is_file():
            ctx.progress.update(text="rendering the built-in procedural scene (once)")
    root = resolve_data_dir(ctx.data).resolve()
    cfg = ctx.preset.experiment()
    ctx.progress.update(text="loading the test views")
    ds = load_from_config(root, cfg.data, ("test",))
    test = ds["test"]
    n_train = len(json.loads((root / "transforms_train.json").read_text()).get("frames", []))
    k = max(0, min(ctx.preset.figure_views, test.n_views))
    picks = sorted({round(i * (test.n_views - 1) / max(1, k - 1)) for i in range(k)}) if k > 1 else list(range(k))
    views = []
    (ctx.run_dir / "quality" / "gt").mkdir(parents=True, exist_ok=True)
    for v in picks:
        name = test.frame_names[v]
        rel = f"quality/gt/{name}.png"
        write_png(ctx.run_dir / rel, to_uint8(test.rgb(v)))
        views.append({"name": name, "index": int(v), "gt": rel})
    return "ok", None, {
        "path": str(root),
        "procedural": procedural,
        "name": root.name,
        "width": test.width,
        "height": test.height,
        "downsample": cfg.data.downsample,
        "n_train": n_train,
        "n_test_evaluated": test.n_views,
        "test_frames": list(test.frame_names),
        "summary": f"{test.width}x{test.height} (downsample {cfg.data.downsample}), {n_train} training views, "
                   f"{test.n_views} test views evaluated ({', '.join(test.frame_names[:6])}"
                   f"{', ...' if test.n_views > 6 else ''})",
        "figure_views": views,
    }


BENCH_ORDER = ("precision", "framework", "official_settings", "appearance_strategies", "vmap", "compile", "devices",
               "memory")
"""Benchmark files (``benchmarks/test_<name>.py``) in the order they run: the groups that answer the
suite's questions first, so that a stage stopped at its time limit keeps those (the JSON is written
on interrupt). Files not listed run last."""


def bench_targets(root: Path = REPO_ROOT) -> list[str]:
    files = sorted(p.name for p in (root / "benchmarks").glob("test_*.py"))
    rank = {f"test_{name}.py": i for i, name in enumerate(BENCH_ORDER)}
    return [f"benchmarks/{f}" for f in sorted(files, key=lambda f: (rank.get(f, len(rank)), f))]


def bench_command(json_path: Path, extra_args: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "pytest", *bench_targets(), "-v", "-p", "no:cacheprovider", "--color=no",
            f"--benchmark-json={json_path}", "--benchmark-sort=name", "--benchmark-columns=min,median,max,rounds",
            *extra_args]


def run_benchmarks(json_path: Path, outcomes_path: Path, log_path: Path, size: str, *, timeout_s: float,
                   extra_args: Sequence[str] = (), progress: Optional[Callable[[float, str], None]] = None) -> dict:
    """Run the benchmark suite at ``size`` in a subprocess; returns {returncode, total, failed, error, tail}."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    for p in (json_path, outcomes_path):
        if p.exists():
            p.unlink()
    state = {"total": None}
    pct = re.compile(r"^(benchmarks/\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\s+\[\s*(\d+)%\]")
    coll = re.compile(r"collected (\d+) items?")

    def on_line(line: str):
        m = coll.search(line)
        if m:
            state["total"] = int(m.group(1))
        m = pct.match(line)
        if m and progress is not None:
            progress(int(m.group(3)) / 100.0, f"{m.group(1).split('::')[-1]} {m.group(2).lower()}")

    env = child_env({"TENSORF_BENCH_SIZE": size, "TENSORF_BENCH_OUTCOMES": outcomes_path})
    # four host devices for the ``devices`` group on CPU (a jax option, harmless where GPUs are the
    # default backend); the other groups run on the first device as before
    env.setdefault("JAX_NUM_CPU_DEVICES", "4")
    rc, tail = run_child(bench_command(json_path, extra_args), log_path, env=env, timeout_s=timeout_s, on_line=on_line)
    from tensorf_bench.report.results import benchmark_problems, read_outcomes

    problems = benchmark_problems(read_outcomes(outcomes_path))
    failed = [p for p in problems if p["outcome"] == "failed"]
    out = {"returncode": rc, "total": state["total"], "failed": len(failed),
           "skipped": len([p for p in problems if p["outcome"] == "skipped"])}
    if rc == 0:
        out["error"] = None
    elif rc == 5:  # pytest: no test collected or selected
        out["error"] = (f"no benchmark to run at size {size}"
                        f"{' matching ' + repr(list(extra_args)) if extra_args else ''} (cases per size: "
                        "benchmarks/bench_sizes.py)")
    elif failed:
        out["error"] = f"{len(failed)} of {state['total'] or '?'} benchmarks failed; first: {failed[0]['test'].split('::')[-1]}: {failed[0]['error']}"
    else:
        out["error"] = f"pytest exited with code {rc}: {error_line(rc, tail)}"
    return out


def stage_bench(ctx: Context):
    size = ctx.preset.bench_size
    res = run_benchmarks(ctx.run_dir / "bench" / "benchmarks.json", ctx.run_dir / "bench" / "outcomes.jsonl",
                         ctx.log_path("bench"), size, timeout_s=ctx.preset.bench_timeout_s,
                         extra_args=ctx.options.get("bench_args", ()),
                         progress=lambda f, t: ctx.progress.update(f, t))
    data = {"json": "bench/benchmarks.json", "outcomes": "bench/outcomes.jsonl", "size": size, **res}
    if not (ctx.run_dir / data["json"]).is_file():
        data.pop("json")
    return ("ok" if res["returncode"] == 0 else "failed"), res["error"], data


def quality_stage(spec: QualitySpec):
    def fn(ctx: Context):
        cfg = ctx.preset.experiment(spec)
        qdir = ctx.run_dir / "quality" / spec.name
        if qdir.exists():
            shutil.rmtree(qdir)  # a half-finished earlier attempt
        qdir.mkdir(parents=True)
        figure_views = [v["name"] for v in (read_stage(ctx.run_dir, "data") or StageRecord("data", "data", "ok")).data.get("figure_views", [])]
        job = {
            "spec": dataclasses.asdict(spec),
            "config": cfg.to_dict(),
            "data_dir": ctx.options["data_dir"],
            "out_dir": str(qdir),
            "lpips": ctx.options.get("lpips", True),
            "keep_models": ctx.options.get("keep_models", False),
            "keep_renders": ctx.options.get("keep_renders", False),
            "figure_views": figure_views,
        }
        atomic_write_json(qdir / "job.json", job)
        budget = 60.0 * cfg.train.minutes
        state = {"last": ""}

        def on_line(line: str):
            if line.startswith(PROGRESS_PREFIX):
                p = json.loads(line[len(PROGRESS_PREFIX):])
                if p.get("phase") == "eval":
                    state["last"] = f"evaluating view {p.get('done', '?')}/{p.get('of', '?')}"
                else:
                    state["last"] = f"step {p.get('step')}, {p.get('elapsed', 0):.0f}/{budget:.0f} s, PSNR {p.get('psnr', 0):.1f}"
                ctx.progress.update(text=state["last"])

        ctx.progress.update(text="starting")
        cmd = [sys.executable, "-m", "tensorf_bench.report_runner", "quality", str(qdir / "job.json")]
        timeout = budget + 6 * ctx.preset.quality_overhead_s + 600
        rc, tail = run_child(cmd, ctx.log_path(f"quality-{spec.name}"), env=child_env(), timeout_s=timeout, on_line=on_line)
        data = {"spec": dataclasses.asdict(spec), "label": spec.label, "budget_s": budget, "returncode": rc}
        if (qdir / "run.json").is_file():
            data["run_json"] = f"quality/{spec.name}/run.json"
            data["eval_dir"] = f"quality/{spec.name}/eval"
        if rc != 0:
            return "failed", error_line(rc, tail), data
        if "run_json" not in data:
            return "failed", "the run wrote no run.json", data
        return "ok", None, data

    return fn


def parity_available() -> bool:
    try:
        return importlib.util.find_spec("tensorf_bench.commands.parity") is not None
    except (ImportError, ValueError):
        return False


def stage_parity(ctx: Context):
    """``tensorf-bench parity --out RUN_DIR/parity``: its parity.md and parity.json go into the report."""
    if not parity_available():
        return "skipped", "no `tensorf-bench parity` command in this checkout", {"available": False}
    pdir = ctx.run_dir / "parity"
    for name in ("parity.md", "parity.json"):
        if (pdir / name).exists():
            (pdir / name).unlink()
    ctx.progress.update(text="running the parity suite")
    cmd = [sys.executable, "-m", "tensorf_bench.cli", "parity", "--out", str(pdir), "--quiet"]
    if ctx.preset.parity_k:
        cmd += ["-k", ctx.preset.parity_k]
    rc, tail = run_child(cmd, ctx.log_path("parity"), env=child_env(), timeout_s=ctx.preset.parity_timeout_s)
    data: dict[str, Any] = {"available": True, "returncode": rc, "selection": ctx.preset.parity_k}
    for key, name in (("markdown", "parity.md"), ("json", "parity.json")):
        if (pdir / name).is_file():
            data[key] = f"parity/{name}"
    report = read_json(pdir / "parity.json") or {}
    if report.get("summary"):
        data["summary"] = report["summary"]
    if rc == 0:
        return "ok", None, data
    s = report.get("summary") or {}
    if s:
        err = (f"{s.get('comparisons_failed', '?')} comparison(s) out of tolerance, {s.get('tests_failed', '?')} "
               f"test(s) failed (pytest exit {s.get('pytest_exit')})")
    else:
        err = error_line(rc, tail)
    return "failed", err, data

