"""Shared fixtures of the pytest-benchmark suite, the size switch, and the outcome recorder.

Sizes: ``TENSORF_BENCH_SIZE=smoke|quick|full|gpu`` (default ``smoke``; see ``bench_sizes.py``).
``make test`` runs the suite with ``--benchmark-disable`` at the smoke size: every benchmark then
runs its function once and checks its result (shapes, finite values, variants and frameworks that
agree), so the suite is tested, not timed. ``tensorf-bench bench`` and ``tensorf-bench report`` run
it at a real size with ``--benchmark-json``.

Every result carries ``extra_info``: group-specific keys (workload, variant, strategy, k, dtype,
impl, grid, rays, samples per ray, compile seconds, memory bytes) plus what ``run_info`` gives
(device, platform, size, commit, allocator).

When ``TENSORF_BENCH_OUTCOMES`` names a file, the outcome of every test (passed, failed, skipped,
with a one-line reason) is appended to it as a JSON line, so that a report lists failed and skipped
benchmarks with their error instead of leaving them out.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import bench_sizes` from any rootdir

import bench_sizes  # noqa: E402
import bench_workloads as W  # noqa: E402

OUTCOMES_ENV = "TENSORF_BENCH_OUTCOMES"
REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Outcome recording
# ---------------------------------------------------------------------------------------------


def _one_line(report: pytest.TestReport) -> str:
    if report.passed:
        return ""
    lr = report.longrepr
    if report.skipped and isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2]).replace("Skipped: ", "", 1)
    crash = getattr(lr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        text = crash.message
    else:
        text = str(lr)
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return (lines[0] if lines else "")[:300]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get(OUTCOMES_ENV)
    if not path or "benchmarks" not in Path(str(report.fspath)).parts:
        return
    if report.when == "call" or report.outcome != "passed":
        row = {
            "test": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "error": _one_line(report),
            "seconds": round(float(report.duration), 3),
        }
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@pytest.fixture(scope="session")
def size() -> bench_sizes.BenchSize:
    return bench_sizes.current_size()


@pytest.fixture(scope="session")
def run_info(size) -> dict:
    """extra_info common to every result of the session."""
    from tensorf_common.runtime import active_allocator

    return {"size": size.name, "commit": git_commit(), "allocator": active_allocator()}


@pytest.fixture(scope="session")
def jax_info() -> dict:
    return W.jax_device_info()


@pytest.fixture(scope="session")
def torch_info() -> dict:
    return W.torch_device_info()


@pytest.fixture(scope="session")
def jax_cache() -> dict:
    """Compiled JAX workloads shared between groups (same configuration, same executable)."""
    return {}


@pytest.fixture
def record(benchmark, run_info):
    """``record(framework_info, **extra)`` fills ``benchmark.extra_info``."""

    def fill(device_info: dict, **extra):
        benchmark.extra_info.update(run_info)
        benchmark.extra_info.update(device_info)
        benchmark.extra_info.update({k: v for k, v in extra.items()})

    return fill
