"""The results model of a report run: benchmark rows, quality rows, failures.

Inputs (all optional, so that a report shows whatever finished):

- ``bench/benchmarks.json``: pytest-benchmark's ``--benchmark-json`` output; one row per benchmark
  with its timing statistics and its ``extra_info`` (workload, variant, strategy, k, dtype, rays...);
- ``bench/outcomes.jsonl``: one line per benchmark test (``benchmarks/conftest.py``'s recorder): the
  failed and skipped ones appear in the report with their one-line reason;
- ``stages/quality-<name>.json``: a quality run's stage record, whose ``data`` points at the run's
  ``run.json`` (the JAX ``train_run`` summary or its torch equivalent) and holds the spec.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from .io import StageRecord, read_json

TIMING_KEYS = ("min", "max", "mean", "median", "stddev", "iqr", "q1", "q3", "rounds")
GROUP_ORDER = ("vmap", "lookup", "appearance", "precision", "framework", "official", "compile", "memory")
NOT_TIMED_GROUPS = ("memory",)
"""Groups whose timed figure is not a throughput (the memory probe's wall time)."""


def _num(v: Any) -> Optional[float]:
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, str):
        if v in ("inf", "-inf", "nan"):
            return float(v)
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


def benchmark_rows(bench: Optional[dict]) -> list[dict]:
    """Flat rows from a pytest-benchmark JSON document."""
    rows = []
    for b in (bench or {}).get("benchmarks", []):
        stats = b.get("stats", {})
        extra = dict(b.get("extra_info") or {})
        row: dict[str, Any] = {
            "group": b.get("group") or "ungrouped",
            "test": b.get("fullname") or b.get("name"),
            "name": b.get("name"),
            "param": b.get("param"),
        }
        for k in TIMING_KEYS:
            row[f"{k}_s" if k != "rounds" else "rounds"] = stats.get(k)
        row.update(extra)
        row.setdefault("label", b.get("param") or b.get("name"))
        median = _num(row.get("median_s"))
        rays, points = _num(extra.get("rays")), _num(extra.get("points"))
        if row["group"] in NOT_TIMED_GROUPS or not median or median <= 0:
            row["throughput"], row["throughput_unit"] = None, None
        elif rays:
            row["throughput"], row["throughput_unit"] = rays / median, "rays/s"
        elif points:
            row["throughput"], row["throughput_unit"] = points / median, "points/s"
        else:
            row["throughput"], row["throughput_unit"] = None, None
        rows.append(row)
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    rows.sort(key=lambda r: order.get(r["group"], len(order)))
    return rows


def read_outcomes(path: Path) -> list[dict]:
    """Rows of an outcomes JSON-lines file (missing file: none)."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def benchmark_problems(outcomes: list[dict]) -> list[dict]:
    """Failed and skipped benchmark tests: ``{"test", "outcome", "error"}`` (one row per test)."""
    seen: dict[str, dict] = {}
    for o in outcomes:
        if o.get("outcome") in ("failed", "skipped"):
            test = o.get("test", "?")
            if test not in seen or o.get("outcome") == "failed":
                seen[test] = {"test": test, "outcome": o["outcome"], "error": o.get("error", "")}
    return list(seen.values())


def _mean_metric(run: dict, key: str) -> Optional[float]:
    return _num(((run.get("eval") or {}).get("mean") or {}).get(key))


def quality_row(rec: StageRecord, run: Optional[dict]) -> dict:
    """One quality run as a flat row (spec, speed, quality); ``run`` is its run.json (None if absent)."""
    spec = rec.data.get("spec", {})
    row: dict[str, Any] = {
        "name": spec.get("name", rec.name.removeprefix("quality-")),
        "label": rec.data.get("label") or spec.get("name", rec.name),
        "framework": spec.get("framework"),
        "appearance": spec.get("appearance") if spec.get("framework") == "jax" else "threshold",
        "k": spec.get("topk"),
        "precision": spec.get("precision", "fp32"),
        "status": rec.status,
        "error": rec.error,
        "budget_s": _num(rec.data.get("budget_s")),
        "stage_seconds": rec.seconds,
    }
    if not run:
        return row
    compiles = run.get("compiles")  # absent: not recorded; [] (torch): nothing compiled
    history = run.get("history") or []
    row.update(
        steps=run.get("steps"),
        train_seconds=_num(run.get("train_seconds")),
        setup_seconds=_num(run.get("setup_seconds")),
        time_to_first_step=_num(run.get("time_to_first_step")),
        rays_per_s=_num(run.get("rays_per_s")),
        batch_size=((run.get("config") or {}).get("train") or {}).get("batch_size"),
        n_compiles=None if compiles is None else len(compiles),
        compile_seconds=None if compiles is None else sum(_num(c.get("seconds")) or 0.0 for c in compiles),
        peak_rss_bytes=_num(run.get("peak_rss_bytes")),
        device_peak_bytes=_num(run.get("device_peak_bytes", run.get("cuda_peak_bytes"))),
        grid_size="x".join(str(g) for g in run.get("grid_size") or []) or None,
        psnr=_mean_metric(run, "psnr"),
        ssim=_mean_metric(run, "ssim"),
        lpips_alex=_mean_metric(run, "lpips_alex"),
        lpips_vgg=_mean_metric(run, "lpips_vgg"),
        n_views=(run.get("eval") or {}).get("n_images"),
        eval_render_seconds=_num(run.get("eval_render_seconds")),
        train_psnr=_num(history[-1].get("psnr")) if history else None,
        device=run.get("device"),
    )
    if row["steps"] and row["batch_size"] and row["train_seconds"]:
        row["rays_per_s_budget"] = row["steps"] * row["batch_size"] / row["train_seconds"]
    return row


def quality_history(run: Optional[dict]) -> list[tuple[float, float, int]]:
    """(elapsed seconds, training-batch PSNR, step) per log point."""
    out = []
    for h in (run or {}).get("history") or []:
        t, p = _num(h.get("elapsed")), _num(h.get("psnr"))
        if t is not None and p is not None and math.isfinite(p):
            out.append((t, p, int(h.get("step", 0))))
    return out


def per_view_rows(name: str, run: Optional[dict]) -> list[dict]:
    out = []
    for r in ((run or {}).get("eval") or {}).get("per_image") or []:
        out.append({"run": name, "view": r.get("name"), **{k: _num(r.get(k)) for k in ("psnr", "ssim", "lpips_alex", "lpips_vgg")}})
    return out


def load_run_json(run_dir: Path, rec: StageRecord) -> Optional[dict]:
    rel = rec.data.get("run_json")
    if not rel:
        return None
    return read_json(Path(run_dir) / rel)
