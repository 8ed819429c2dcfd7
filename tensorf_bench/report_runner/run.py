"""One report run: plan the stages, run (or resume) them, record each, build the pages."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tensorf_common.errors import TensorfBenchError
from tensorf_bench.report.io import (
    STAGES_DIR,
    StageRecord,
    atomic_write_json,
    one_line,
    read_json,
    read_stages,
    write_stage,
)
from tensorf_bench.report.presets import BUILD_ESTIMATE_S, REPORT_PRESETS, ReportPreset, preset_to_json

from .progress import Progress
from .stages import Context, Stage, quality_stage, stage_bench, stage_data, stage_machine, stage_parity

REPORT_JSON = "report.json"


class ReportError(TensorfBenchError, ValueError):
    """A report run cannot start (bad RUN_DIR, preset or resume target). The CLI prints it on one line."""


def read_report_meta(run_dir: Path) -> dict:
    """``RUN_DIR/report.json`` of a run to resume, checked: a JSON object naming a known report
    preset (``preset.name``) and the dataset (``data``, null for the built-in scene). A damaged file
    is a :class:`ReportError` that names it."""
    path = Path(run_dir) / REPORT_JSON
    if not path.is_file():
        raise ReportError(f"--resume: {run_dir} is not a report run (no {REPORT_JSON})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: not valid JSON ({one_line(exc)})") from None
    if not isinstance(meta, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    preset = meta.get("preset")
    name = preset.get("name") if isinstance(preset, dict) else None
    if not isinstance(name, str):
        raise ReportError(f"{path}: missing 'preset.name' (the run's report preset)")
    if name not in REPORT_PRESETS:
        raise ReportError(f"{path}: preset.name {name!r} is not a report preset (known: {sorted(REPORT_PRESETS)})")
    if "data" not in meta:
        raise ReportError(f"{path}: missing 'data' (the dataset folder, or null for the built-in scene)")
    if not (meta["data"] is None or isinstance(meta["data"], str)):
        raise ReportError(f"{path}: 'data' must be a folder name or null, got {meta['data']!r}")
    if not isinstance(meta.get("resumed", []), list):
        raise ReportError(f"{path}: 'resumed' must be a list, got {type(meta['resumed']).__name__}")
    return meta


def check_stage_records(run_dir: Path) -> None:
    """Every ``RUN_DIR/stages/*.json`` of a run to resume must be a stage record: a damaged one
    would be taken for a failed stage and silently replaced, so it is named instead."""
    for p in sorted((Path(run_dir) / STAGES_DIR).glob("*.json")):
        try:
            StageRecord.from_json(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise ReportError(f"{p}: not a stage record ({one_line(exc)}); delete it to run that stage again") from None


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
                stages.append(Stage(f"quality-{spec.name}", "quality", p.quality_estimate_s, quality_stage(spec)))
        if "parity" not in self.skip and p.parity:
            stages.append(Stage("parity", "parity", p.parity_estimate_s, stage_parity))
        for s in stages:
            if s.name in self.stage_overrides:
                s.fn = self.stage_overrides[s.name]
        return stages

    def _prepare(self) -> None:
        rd = self.run_dir
        if self.resume:
            meta = read_report_meta(rd)
            check_stage_records(rd)
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
        from tensorf_common.data.scene_cache import resolve_data_dir

        self._prepare()
        if threading.current_thread() is threading.main_thread():
            # a SIGTERM stops the run like Ctrl-C: the running child is killed, finished stages stay
            signal.signal(signal.SIGTERM, _raise_interrupt)
        stages = self.plan()
        done = {n: r for n, r in read_stages(self.run_dir).items() if r.status == "ok"} if self.resume else {}
        todo = [s for s in stages if s.name not in done]
        prog = Progress(sum(s.estimate_s for s in todo) + BUILD_ESTIMATE_S, enabled=self.progress)
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
            prog.start_stage("build", BUILD_ESTIMATE_S)
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

