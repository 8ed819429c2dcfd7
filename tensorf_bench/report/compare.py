"""Two report runs side by side (``tensorf-bench compare RUN_A RUN_B``), as markdown.

Benchmarks are matched by their test id (``benchmarks/test_x.py::test_y[param]``), quality runs by
name. For each benchmark: both medians and the speed-up of B over A (``median_A / median_B``: above
1 means B is faster); for each quality run: both values of every metric and B - A (PSNR, SSIM,
LPIPS) or B / A (throughput, steps). Rows present in only one run are listed as such.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from tensorf_common.errors import TensorfBenchError
from .io import read_json
from .tables import Column, Table, fmt_float, fmt_rate, fmt_ratio, fmt_seconds

RESULTS = "results.json"


class CompareError(TensorfBenchError, ValueError):
    """A run folder without results (the message names it)."""


def load_results(run_dir) -> dict:
    p = Path(run_dir)
    path = p / RESULTS if p.is_dir() else p
    res = read_json(path)
    if res is None:
        raise CompareError(f"{path}: no results.json (is this a report run folder? build it with "
                           "`tensorf-bench report --resume RUN_DIR`)")
    return res


def _ok(x: Any) -> bool:
    try:
        return x is not None and not isinstance(x, bool) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _ratio(a, b) -> Optional[float]:
    return float(a) / float(b) if _ok(a) and _ok(b) and float(b) != 0 else None


def _describe(res: dict, name: str) -> str:
    m = res.get("machine") or {}
    gpus = ", ".join(g.get("name", "?") for g in m.get("gpus") or []) or "no GPU"
    git = (m.get("git") or {}).get("short") or "?"
    preset = ((res.get("meta") or {}).get("preset") or {}).get("name", "?")
    return (f"- **{name}** `{(res.get('meta') or {}).get('run_id', '?')}`: {m.get('cpu_model', '?')}, {gpus}; "
            f"commit {git}; preset {preset}; {m.get('date', '?')}")


def benchmark_comparison(a: dict, b: dict) -> Table:
    ra = {r["test"]: r for r in a.get("benchmarks", []) if r.get("group") != "memory"}
    rb = {r["test"]: r for r in b.get("benchmarks", []) if r.get("group") != "memory"}
    rows = []
    for test in list(ra) + [t for t in rb if t not in ra]:
        x, y = ra.get(test), rb.get(test)
        ref = x or y
        rows.append({
            "group": ref.get("group"),
            "benchmark": ref.get("label") or test,
            "workload": ref.get("workload"),
            "a": x.get("median_s") if x else None,
            "b": y.get("median_s") if y else None,
            "speedup": _ratio(x.get("median_s"), y.get("median_s")) if x and y else None,
            "note": "" if x and y else ("only in A" if x else "only in B"),
        })
    return Table("Benchmarks (median time; speed-up of B over A = A / B)", pd.DataFrame(rows),
                 [Column("group", "group"), Column("workload", "workload"), Column("benchmark", "benchmark"),
                  Column("a", "A", fmt_seconds), Column("b", "B", fmt_seconds),
                  Column("speedup", "B speed-up", fmt_ratio, "max"), Column("note", "note")], block=["group"])


def memory_comparison(a: dict, b: dict) -> Table:
    ra = {r["test"]: r for r in a.get("benchmarks", []) if r.get("group") == "memory"}
    rb = {r["test"]: r for r in b.get("benchmarks", []) if r.get("group") == "memory"}
    rows = []
    for test in list(ra) + [t for t in rb if t not in ra]:
        x, y = ra.get(test) or {}, rb.get(test) or {}
        ref = x or y
        rows.append({"benchmark": ref.get("label") or test, "a": x.get("peak_rss_bytes"), "b": y.get("peak_rss_bytes"),
                     "ratio": _ratio(y.get("peak_rss_bytes"), x.get("peak_rss_bytes"))})
    from .tables import fmt_bytes

    return Table("Peak memory (RSS; B / A)", pd.DataFrame(rows),
                 [Column("benchmark", "benchmark"), Column("a", "A", fmt_bytes), Column("b", "B", fmt_bytes),
                  Column("ratio", "B / A", fmt_ratio)])


QUALITY_FIGURES = (
    ("psnr", "PSNR", fmt_float(2), "diff"),
    ("ssim", "SSIM", fmt_float(4), "diff"),
    ("lpips_alex", "LPIPS-alex", fmt_float(4), "diff"),
    ("lpips_vgg", "LPIPS-vgg", fmt_float(4), "diff"),
    ("steps", "steps", lambda v: f"{int(v):,}" if _ok(v) else "–", "ratio"),
    ("rays_per_s", "train rays/s", fmt_rate, "ratio"),
)


def quality_comparison(a: dict, b: dict) -> Table:
    qa = {r["name"]: r for r in a.get("quality", [])}
    qb = {r["name"]: r for r in b.get("quality", [])}
    rows = []
    for name in list(qa) + [n for n in qb if n not in qa]:
        x, y = qa.get(name) or {}, qb.get(name) or {}
        for key, title, fmt, how in QUALITY_FIGURES:
            va, vb = x.get(key), y.get(key)
            if not (_ok(va) or _ok(vb)):
                continue
            if how == "diff":
                change = f"{float(vb) - float(va):+.4g}" if _ok(va) and _ok(vb) else "–"
            else:
                change = fmt_ratio(_ratio(vb, va))
            rows.append({"run": (x or y).get("label", name), "figure": title, "a": fmt(va), "b": fmt(vb), "change": change})
    return Table("Quality runs (B - A for metrics, B / A for steps and throughput)", pd.DataFrame(rows),
                 [Column("run", "run"), Column("figure", "figure"), Column("a", "A"), Column("b", "B"),
                  Column("change", "change")])


def compare_markdown(run_a, run_b) -> str:
    a, b = load_results(run_a), load_results(run_b)
    parts = ["# Report comparison", "", _describe(a, "A"), _describe(b, "B"), ""]
    for t in (quality_comparison(a, b), benchmark_comparison(a, b), memory_comparison(a, b)):
        parts += [f"## {t.title}", "", t.to_markdown()]
    return "\n".join(parts)
