"""The report runner: benchmarks, quality runs and parity, stage by stage, then the report pages.

``tensorf-bench report`` creates RUN_DIR (default ``reports/<run-id>``) and runs these stages:

1. ``machine``: CPU, cores, memory, GPUs, library versions, commit, date, load average;
2. ``data``: resolves the dataset (renders the built-in procedural scene once when no ``--data``),
   writes the ground truth of the figure views;
3. ``bench``: the pytest-benchmark suite in a subprocess under the allocator, at the preset's size,
   with ``--benchmark-json`` and a per-test outcome file;
4. ``quality-<name>``: one subprocess per compared configuration (JAX through
   ``jax_tensorf.run.train_run``, torch through ``torch_reference.training.train`` with
   ``wall_clock=True`` and ``torch_reference.evaluation``): the same ExperimentConfig except the
   appearance strategy, the same data, batches and wall-clock budget, evaluated on the test views
   (PSNR, SSIM, LPIPS-alex, LPIPS-vgg). A crash or an out-of-memory kill fails that run only, and
   each process's peak memory is its own;
5. ``parity``: ``tensorf-bench parity`` when this checkout has that command ("not available" otherwise);

then builds ``index.md``, ``index.html``, ``results.json`` and CSV files (:mod:`tensorf_bench.report.build`).

Each stage writes ``RUN_DIR/stages/<name>.json`` atomically when it ends, with its status (ok, failed,
skipped), its one-line error and its data. ``--resume RUN_DIR`` skips the stages recorded as ok and
runs the others again. A failed stage (or benchmark) does not stop the others; it is listed in the
report, and the command exits 1 at the end. Progress (stage, what it is doing, time left) is shown
with tqdm; every subprocess's output goes to ``RUN_DIR/logs/<stage>.log``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tensorf_common.errors import TensorfBenchError
from tensorf_bench.report.io import (
    StageRecord,
    atomic_write_json,
    one_line,
    read_json,
    read_stage,
    read_stages,
    write_stage,
)
from tensorf_bench.report.presets import QualitySpec, ReportPreset, preset_to_json

REPO_ROOT = Path(__file__).resolve().parents[1]
PROGRESS_PREFIX = "@@progress "
REPORT_JSON = "report.json"


class ReportError(TensorfBenchError, ValueError):
    """A report run cannot start (bad RUN_DIR, preset or resume target). The CLI prints it on one line."""


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


class Progress:
    """One tqdm bar over the whole run, in estimated seconds of work.

    Stages report a fraction done and a short text; a ticker thread moves the bar with the elapsed
    time inside the current stage (capped below the stage's estimate until it ends), so the bar and
    its time-left estimate keep moving during long subprocesses."""

    def __init__(self, total_s: float, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self._lock = threading.Lock()
        self._done = 0.0
        self._stage = ("", 1.0, time.perf_counter())
        self._fraction: Optional[float] = None
        self._text = ""
        self._stop = threading.Event()
        if enabled:
            from tqdm.auto import tqdm

            tty = sys.stderr.isatty()
            self.bar = tqdm(total=round(total_s), unit="s", dynamic_ncols=True, file=sys.stderr,
                            mininterval=0.5 if tty else 30.0,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} est. s [{elapsed}<{remaining}]")
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def start_stage(self, name: str, estimate_s: float) -> None:
        with self._lock:
            self._stage = (name, max(1.0, estimate_s), time.perf_counter())
            self._fraction = None
            self._text = ""

    def update(self, fraction: Optional[float] = None, text: Optional[str] = None) -> None:
        with self._lock:
            if fraction is not None:
                self._fraction = max(0.0, min(1.0, fraction))
            if text is not None:
                self._text = text

    def end_stage(self, line: str) -> None:
        with self._lock:
            self._done += self._stage[1]
        self.write(line)

    def skip_stage(self, estimate_s: float, line: str) -> None:
        with self._lock:
            self._done += estimate_s
        self.write(line)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def _position(self) -> tuple[float, str]:
        with self._lock:
            name, est, t0 = self._stage
            by_time = min(0.9, (time.perf_counter() - t0) / est)
            # a reported fraction (e.g. tests done) moves the bar ahead of the clock, never behind it
            frac = by_time if self._fraction is None else max(self._fraction, by_time)
            return self._done + frac * est, (f"{name}: {self._text}" if self._text else name)

    def _tick(self) -> None:
        # a terminal gets a live bar; a log file (no tty) a line every 30 s
        every = 1.0 if sys.stderr.isatty() else 30.0
        while not self._stop.wait(every):
            pos, desc = self._position()
            if self.bar is not None:
                self.bar.n = min(pos, self.bar.total or pos)
                self.bar.set_description_str(desc[:60], refresh=False)
                self.bar.refresh()

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.n = self.bar.total
            self.bar.refresh()
            self.bar.close()


# ---------------------------------------------------------------------------------------------
# Subprocesses
# ---------------------------------------------------------------------------------------------


def child_env(extra: Optional[dict] = None) -> dict:
    """The environment of a child: this one under the suite's allocator, headless matplotlib."""
    from tensorf_common.runtime import allocator_env

    env = allocator_env()
    env.setdefault("MPLBACKEND", "Agg")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def run_child(cmd: Sequence[str], log_path: Path, *, env: dict, timeout_s: float,
              on_line: Optional[Callable[[str], None]] = None, cwd: Path = REPO_ROOT) -> tuple[int, list[str]]:
    """Run ``cmd``, copying its output to ``log_path`` and to ``on_line``. Returns (exit code, last
    output lines). A timeout interrupts the child's whole process group (SIGINT), kills it if it has
    not ended :data:`INTERRUPT_GRACE_S` later, and returns exit code 124. Ctrl-C kills it and is
    re-raised."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(shlex.quote(str(c)) for c in cmd) + "\n")
        log.flush()
        with _children_get_default_sigint() as preexec:
            proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    env=env, cwd=cwd, start_new_session=True, errors="replace", preexec_fn=preexec)

        def pump():
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                s = line.rstrip("\n")
                if s.strip():
                    tail.append(s)
                    del tail[:-40]
                if on_line is not None:
                    try:
                        on_line(s)
                    except Exception:  # progress parsing never breaks a run
                        pass

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _interrupt_then_kill(proc)
            rc = 124
            tail.append(f"killed after the stage's {timeout_s:.0f} s time limit")
        except KeyboardInterrupt:
            _kill(proc)
            raise
        reader.join(timeout=10)
    return rc, tail


INTERRUPT_GRACE_S = 30.0
"""Seconds a timed-out child gets after SIGINT to finish (pytest then ends its session, so
pytest-benchmark still writes the JSON of the benchmarks that ran) before it is killed."""


@contextlib.contextmanager
def _children_get_default_sigint():
    """Make a child started inside this block take SIGINT's default action. A command started in
    the background by a non-interactive shell (``cmd &``, ``nohup``) ignores SIGINT and its
    children inherit that, so a timeout's SIGINT would do nothing and the child's partial results
    (pytest-benchmark's JSON) would be lost. On the main thread this process catches SIGINT for the
    moment of the spawn (a caught signal is reset to the default by ``exec``); elsewhere the child
    resets it itself (yields a ``preexec_fn``, which makes subprocess fork instead of vfork)."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield None
    elif threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            yield None
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        yield _default_sigint


def _default_sigint() -> None:  # runs in the child between fork and exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_then_kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=INTERRUPT_GRACE_S)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        _kill(proc)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired, PermissionError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def _error_line(rc: int, tail: list[str]) -> str:
    """The most telling line of a failed child's output."""
    if rc < 0 or rc in (137, -9):
        return f"killed by signal {-rc if rc < 0 else 9} (out of memory?)"
    if rc == 124 and tail and "time limit" in tail[-1]:
        return one_line(tail[-1])
    pat = re.compile(r"^(\w+\.)*\w*(Error|Exception|Exit|Interrupt)\b|^error: |^E +\w+Error")
    for line in reversed(tail):
        if pat.search(line.strip()):
            return one_line(line.strip().lstrip("E ").strip())
    return one_line(tail[-1]) if tail else f"exit code {rc}"


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


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
    from tensorf_common.data import load_from_config, resolve_data_dir
    from tensorf_common.images import to_uint8, write_png

    procedural = ctx.data is None
    if procedural:
        from tensorf_common.data import scene_cache_dir
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
    elif failed:
        out["error"] = f"{len(failed)} of {state['total'] or '?'} benchmarks failed; first: {failed[0]['test'].split('::')[-1]}: {failed[0]['error']}"
    else:
        out["error"] = f"pytest exited with code {rc}: {_error_line(rc, tail)}"
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
            return "failed", _error_line(rc, tail), data
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
        err = _error_line(rc, tail)
    return "failed", err, data


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def default_run_id(preset: str, data: Optional[str]) -> str:
    name = "procedural" if data is None else re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(data).name or "data")
    host = re.sub(r"[^A-Za-z0-9_.-]+", "_", platform.node() or "host")[:20]
    return f"{datetime.datetime.now():%Y%m%d-%H%M}-{preset}-{name}-{host}"


@dataclass
class ReportRun:
    """One report run: plan, run (or resume) the stages, build the pages. ``run()`` returns the exit code."""

    run_dir: Path
    preset: ReportPreset
    data: Optional[str] = None
    command: str = ""
    resume: bool = False
    progress: bool = True
    skip: tuple[str, ...] = ()
    """Stage kinds not to run this time: bench, quality, parity."""
    quality_only: tuple[str, ...] = ()
    """Run only these quality configurations (by name); empty: all of the preset's."""
    options: dict = field(default_factory=dict)
    stage_overrides: dict = field(default_factory=dict)
    """name -> function, replacing a stage's function (tests)."""

    def plan(self) -> list[Stage]:
        p = self.preset
        stages = [Stage("machine", "machine", 2, stage_machine), Stage("data", "data", 5, stage_data)]
        if "bench" not in self.skip:
            stages.append(Stage("bench", "bench", p.bench_estimate_s, stage_bench))
        if "quality" not in self.skip:
            for spec in p.quality:
                if self.quality_only and spec.name not in self.quality_only:
                    continue
                stages.append(Stage(f"quality-{spec.name}", "quality", 60 * p.minutes + p.quality_overhead_s,
                                    quality_stage(spec)))
        if "parity" not in self.skip and p.parity:
            stages.append(Stage("parity", "parity", p.parity_estimate_s, stage_parity))
        for s in stages:
            if s.name in self.stage_overrides:
                s.fn = self.stage_overrides[s.name]
        return stages

    def _prepare(self) -> None:
        rd = self.run_dir
        if self.resume:
            meta = read_json(rd / REPORT_JSON)
            if meta is None:
                raise ReportError(f"--resume: {rd} is not a report run (no {REPORT_JSON})")
            meta.setdefault("resumed", []).append({"at": _now(), "command": self.command})
            atomic_write_json(rd / REPORT_JSON, meta)
            return
        if rd.exists() and any(rd.iterdir()):
            raise ReportError(f"{rd}: already exists and is not empty (use --resume {rd} to continue it)")
        rd.mkdir(parents=True, exist_ok=True)
        atomic_write_json(rd / REPORT_JSON, {
            "run_id": rd.name,
            "created": _now(),
            "command": self.command,
            "preset": preset_to_json(self.preset),
            "data": self.data,
            "quality_order": [q.name for q in self.preset.quality],
        })

    def run(self) -> int:
        from tensorf_common.data import resolve_data_dir

        self._prepare()
        if threading.current_thread() is threading.main_thread():
            # a SIGTERM stops the run like Ctrl-C: the running child is killed, finished stages stay
            signal.signal(signal.SIGTERM, _raise_interrupt)
        stages = self.plan()
        done = {n: r for n, r in read_stages(self.run_dir).items() if r.status == "ok"} if self.resume else {}
        todo = [s for s in stages if s.name not in done]
        prog = Progress(sum(s.estimate_s for s in todo) + 15, enabled=self.progress)
        prog.write(f"report run {self.run_dir} ({self.preset.name}: {len(todo)} of {len(stages)} stages to run, "
                   f"about {_fmt_minutes(sum(s.estimate_s for s in todo))})")
        ctx = Context(self.run_dir, self.preset, self.data, prog, dict(self.options))
        try:
            for s in stages:
                if s.name in done:
                    prog.write(f"  = {s.name}: done earlier ({done[s.name].seconds:.0f} s)")
                    continue
                if s.kind == "quality" and "data_dir" not in ctx.options:
                    ctx.options["data_dir"] = str(resolve_data_dir(self.data).resolve())
                prog.start_stage(s.name, s.estimate_s)
                started, t0 = _now(), time.perf_counter()
                try:
                    status, error, data = s.fn(ctx)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # one failing stage does not sink the report
                    status, error, data = "failed", one_line(f"{type(exc).__name__}: {exc}"), {}
                rec = StageRecord(s.name, s.kind, status, error, round(time.perf_counter() - t0, 2), started, data or {})
                write_stage(self.run_dir, rec)
                mark = {"ok": "✓", "failed": "✗", "skipped": "-"}[status]
                prog.end_stage(f"  {mark} {s.name}: {status} in {_fmt_minutes(rec.seconds)}" + (f" — {error}" if error else ""))
            prog.start_stage("build", 15)
            prog.update(text="tables, plots and pages")
            from tensorf_bench.report.build import build_report

            meta = read_json(self.run_dir / REPORT_JSON, {})
            meta["load_end"] = _loadavg()
            atomic_write_json(self.run_dir / REPORT_JSON, meta)
            paths = build_report(self.run_dir, load_end=meta["load_end"])
            prog.end_stage(f"  ✓ report: {paths['markdown']} and {paths['html'].name}")
        except KeyboardInterrupt:
            prog.close()
            print(f"interrupted; continue with: tensorf-bench report --resume {self.run_dir}", file=sys.stderr)
            return 130
        prog.close()
        records = read_stages(self.run_dir)
        failed = [r for r in records.values() if r.status == "failed" and r.name in {s.name for s in stages}]
        if failed:
            print(f"{len(failed)} stage(s) failed: " + "; ".join(f"{r.name}: {r.error}" for r in failed), file=sys.stderr)
            return 1
        return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _fmt_minutes(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


# ---------------------------------------------------------------------------------------------
# The quality-run child process
# ---------------------------------------------------------------------------------------------


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

    # the summary names the device (jax_tensorf.xla.device_info)
    return train_run(cfg, job["data_dir"], out_dir, evaluate=True, lpips=job.get("lpips", True), progress=False,
                     on_log=on_log)


def _quality_torch(job: dict, cfg, out_dir: Path) -> dict:
    from tensorf_common.runtime import peak_rss_bytes

    import numpy as np
    import torch

    from tensorf_common.data import load_from_config
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


if __name__ == "__main__":
    sys.exit(main())
