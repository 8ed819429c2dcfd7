"""Benchmark and report subcommands: ``bench`` (the pytest-benchmark suite), ``report`` (benchmarks,
quality runs, parity, then the report pages) and ``compare`` (two report runs side by side).

Only light code at import time; the runner, pandas and matplotlib are imported inside ``run()``.
"""

from __future__ import annotations

import datetime
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import tyro

from tensorf_common.config import ConfigError


def _command_line() -> str:
    return "tensorf-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@dataclass
class Bench:
    """Run the pytest-benchmark suite (vmap, appearance, precision, framework, compile, memory groups)
    at a size, save its JSON and print a summary table.

    Timings: JAX compiled ahead of time outside the timer and blocked on inside it, warm-up rounds,
    inputs on the device, float32 unless a precision case says otherwise.
    """

    size: Literal["smoke", "quick", "full", "gpu"] = "quick"
    """Benchmark size (TENSORF_BENCH_SIZE): shapes and rounds; smoke runs in seconds per test."""
    out: Optional[Path] = None
    """Where to write the --benchmark-json file; default runs/bench-<size>-<timestamp>.json."""
    select: Optional[str] = None
    """Only the benchmarks matching this pytest -k expression (e.g. 'vmap or framework')."""
    timeout: int = 3600
    """Seconds before the suite is stopped."""

    def run(self) -> int:
        from tensorf_bench.report_runner.stages import run_benchmarks
        from tensorf_bench.report.io import read_json
        from tensorf_bench.report.results import benchmark_rows, benchmark_problems, read_outcomes
        from tensorf_bench.report.tables import fmt_rate, fmt_seconds

        out = Path(self.out or Path("runs") / f"bench-{self.size}-{datetime.datetime.now():%Y%m%d-%H%M%S}.json").resolve()
        outcomes = out.with_suffix(".outcomes.jsonl")
        log = out.with_suffix(".log")
        extra = ("-k", self.select) if self.select else ()
        print(f"benchmarks at size {self.size} -> {out} (log {log})", file=sys.stderr)
        last = {"text": ""}

        def progress(fraction: float, text: str) -> None:
            line = f"[{fraction * 100:3.0f}%] {text}"
            if line != last["text"]:
                print(line, file=sys.stderr, flush=True)
                last["text"] = line

        res = run_benchmarks(out, outcomes, log, self.size, timeout_s=self.timeout, extra_args=extra, progress=progress)
        rows = benchmark_rows(read_json(out))
        for r in rows:
            rate = f"{fmt_rate(r['throughput'])} {r['throughput_unit']}" if r.get("throughput") else ""
            print(f"{r['group']:<11} {str(r.get('label') or r['name']):<34} {fmt_seconds(r.get('median_s')):>10}  {rate}")
        for p in benchmark_problems(read_outcomes(outcomes)):
            print(f"{p['outcome']:<11} {p['test']}: {p['error']}")
        if res["error"]:
            print(f"error: {res['error']}", file=sys.stderr)
        return 0 if res["returncode"] == 0 else 1


@dataclass
class Report:
    """Run the benchmarks and the quality runs (same data, batches and wall-clock budget per compared
    configuration), then write a report: RUN_DIR/index.md, a self-contained index.html, results.json
    and CSV files, with tables, plots, the parity table and a generated summary.

    Every stage is recorded in RUN_DIR/stages as it ends; an interrupted run continues with
    --resume RUN_DIR. A failed stage or benchmark appears in the report with its error and makes the
    command exit 1 at the end.
    """

    preset: str = "quick"
    """Report preset: quick (built-in scene, about 10 min on 2 CPU cores), full (lego-sized, about an
    hour), gpu (one H100/H200, about 9 min), smoke (tests of the runner, seconds of training)."""
    data: Optional[str] = None
    """Dataset folder (Blender format); default: the built-in procedural scene."""
    out: Optional[Path] = None
    """RUN_DIR to create; default reports/<date>-<preset>-<dataset>-<host>."""
    resume: Optional[Path] = None
    """Continue this RUN_DIR: stages recorded as ok are skipped, the others run again, the pages are rebuilt."""
    skip: tuple[Literal["bench", "quality", "parity"], ...] = ()
    """Stage kinds not to run (their sections say so)."""
    only: tuple[str, ...] = ()
    """Run only these quality configurations (e.g. jax-topk torch); default: all of the preset's."""
    lpips: bool = True
    """Compute LPIPS (alex and vgg) in the quality evaluations."""
    keep_models: bool = False
    """Keep the trained models and checkpoints of the quality runs (large)."""
    keep_renders: bool = False
    """Keep every evaluation render (default: only the figure views)."""
    progress: bool = True
    """Show a progress bar."""

    def run(self) -> int:
        from tensorf_bench.report_runner.run import ReportRun, default_run_id, read_report_meta
        from tensorf_bench.report.presets import report_preset

        if self.resume is not None:
            run_dir = Path(self.resume)
            meta = read_report_meta(run_dir)
            preset = report_preset(meta["preset"]["name"])
            data = meta.get("data")
            if self.data is not None and self.data != data:
                raise ConfigError(f"--data: {run_dir} was started with --data {data}; resume it without --data")
        else:
            preset = report_preset(self.preset)
            data = self.data if self.data is not None else preset.default_data
            run_dir = Path(self.out or Path("reports") / default_run_id(preset.name, data))
        runner = ReportRun(
            run_dir=run_dir,
            preset=preset,
            data=data,
            command=_command_line(),
            resume=self.resume is not None,
            progress=self.progress,
            skip=tuple(self.skip),
            quality_only=tuple(self.only),
            options={"lpips": self.lpips, "keep_models": self.keep_models, "keep_renders": self.keep_renders},
        )
        unknown = set(self.only) - {q.name for q in preset.quality}
        if unknown:
            raise ConfigError(f"--only: unknown quality runs {sorted(unknown)}; the {preset.name} preset has "
                              f"{[q.name for q in preset.quality]}")
        code = runner.run()
        print(f"report: {run_dir / 'index.md'} and {run_dir / 'index.html'}")
        return code


@dataclass
class Compare:
    """Put two report runs side by side as markdown: speed-up per benchmark, and the change of every
    quality figure (PSNR, SSIM, LPIPS, steps, throughput) per quality run."""

    run_a: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="RUN_A")]]
    """First report run folder (holding results.json)."""
    run_b: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="RUN_B")]]
    """Second report run folder."""
    out: Optional[Path] = None
    """Also write the markdown to this file."""

    def run(self) -> int:
        from tensorf_bench.report.compare import compare_markdown
        from tensorf_common.atomic import write_text

        md = compare_markdown(self.run_a, self.run_b)
        if self.out is not None:
            write_text(self.out, md)
        print(md)
        return 0
