"""Build a report run's pages from its stage records: ``index.md``, a self-contained ``index.html``
(figures embedded as base64 PNG), ``results.json``, ``benchmarks.csv``, ``quality.csv``,
``per_view.csv`` and ``figures/*.png``.

Everything comes from files in RUN_DIR (see :mod:`.results`), so a report can be rebuilt at any
time (``tensorf-bench report --resume RUN_DIR`` rebuilds it) and tested on fake results.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

from tensorf_common.atomic import write_bytes, write_text

from . import plots, summary, tables
from .io import atomic_write_json, read_json, read_stages
from .results import (
    benchmark_problems,
    benchmark_rows,
    load_run_json,
    per_view_rows,
    quality_history,
    quality_row,
    read_outcomes,
)

REPORT_JSON = "report.json"
"""The run's options (preset, dataset, command), written by the runner when the run starts."""


@dataclass
class Block:
    kind: str  # h1, h2, h3, p, table, figure, list, pre, kv
    content: Any
    extra: Any = None


# ---------------------------------------------------------------------------------------------
# Collect
# ---------------------------------------------------------------------------------------------


def collect(run_dir: Path, load_end: Optional[Sequence[float]] = None) -> dict:
    """Everything the pages show, as plain data (what results.json holds)."""
    run_dir = Path(run_dir)
    meta = read_json(run_dir / REPORT_JSON, {}) or {}
    stages = read_stages(run_dir)
    machine = stages["machine"].data if "machine" in stages else {}
    data_info = stages["data"].data if "data" in stages else {}

    bench_rows: list[dict] = []
    problems: list[dict] = []
    bench = stages.get("bench")
    if bench is not None:
        bench_rows = benchmark_rows(read_json(run_dir / bench.data.get("json", "bench/benchmarks.json")))
        for p in benchmark_problems(read_outcomes(run_dir / bench.data.get("outcomes", "bench/outcomes.jsonl"))):
            problems.append({"what": p["test"], "outcome": p["outcome"], "error": p["error"]})

    quality, curves, per_view, runs = [], {}, [], {}
    for name, rec in stages.items():
        if rec.kind != "quality":
            continue
        run = load_run_json(run_dir, rec)
        row = quality_row(rec, run)
        quality.append(row)
        runs[row["name"]] = (rec, run)
        curves[row["label"]] = quality_history(run)
        per_view += per_view_rows(row["label"], run)
    order = {n: i for i, n in enumerate(meta.get("quality_order", []))}
    quality.sort(key=lambda r: order.get(r["name"], len(order)))

    parity_rows: list[dict] = []
    parity_summary: dict = {}
    parity_gaps: list[dict] = []
    parity = stages.get("parity")
    if parity is not None and parity.data.get("json"):
        pj = read_json(run_dir / parity.data["json"]) or {}
        parity_rows = list(pj.get("comparisons") or [])
        parity_summary = dict(pj.get("summary") or {})
        parity_gaps = [o for o in pj.get("outcomes") or [] if o.get("xfail") or o.get("outcome") == "failed"]

    for rec in stages.values():
        if rec.status in ("failed", "skipped") and rec.kind != "parity":
            problems.append({"what": f"stage {rec.name}", "outcome": rec.status, "error": rec.error or ""})
    load_end = list(load_end) if load_end else (meta.get("load_end") or _loadavg())
    sentences = summary.what_this_shows(bench_rows, quality, problems, machine, load_end)
    return {
        "meta": meta,
        "machine": machine,
        "data": data_info,
        "load_end": load_end,
        "stages": [dict(name=r.name, kind=r.kind, status=r.status, error=r.error, seconds=r.seconds, started=r.started)
                   for r in stages.values()],
        "benchmarks": bench_rows,
        "problems": problems,
        "quality": quality,
        "curves": {k: [list(p) for p in v] for k, v in curves.items()},
        "per_view": per_view,
        "parity": parity_rows,
        "parity_summary": parity_summary,
        "parity_gaps": parity_gaps,
        "parity_status": None if parity is None else {"status": parity.status, "error": parity.error,
                                                       "available": parity.data.get("available", True),
                                                       "markdown": parity.data.get("markdown"),
                                                       "selection": parity.data.get("selection")},
        "summary": sentences,
        "figure_views": data_info.get("figure_views", []),
        "_runs": runs,
    }


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _header(res: dict) -> list[Block]:
    meta, m, d = res["meta"], res["machine"], res["data"]
    cores = m.get("cores") or {}
    gpus = m.get("gpus") or []
    gpu = ", ".join(f"{g.get('name')} ({tables.fmt_bytes(g.get('memory_bytes'))})" for g in gpus) or "none"
    libs = m.get("libraries") or {}
    git = m.get("git") or {}
    commit = (git.get("short") or "unknown") + (" (uncommitted changes)" if git.get("dirty") else "")
    preset = meta.get("preset") or {}
    total = sum(s.get("seconds") or 0 for s in res["stages"])
    rows = [
        ("date", m.get("date") or meta.get("created")),
        ("command", f"`{meta.get('command', '?')}`"),
        ("preset", f"{preset.get('name', '?')}: {preset.get('description', '')}"),
        ("dataset", f"{d.get('path', '?')}{' (built-in procedural scene)' if d.get('procedural') else ''}; "
                    f"{d.get('summary', '')}"),
        ("machine", f"{m.get('cpu_model', '?')}, {cores.get('logical', '?')} logical cores "
                    f"({cores.get('usable', '?')} usable), {tables.fmt_bytes(m.get('memory_bytes'))} memory"),
        ("GPU", gpu),
        ("software", f"Python {m.get('python', '?')}; " + ", ".join(f"{k} {v}" for k, v in libs.items() if v)),
        ("allocator", m.get("allocator", "?")),
        ("commit", f"{commit}{' — ' + _short(git['subject'], 90) if git.get('subject') else ''}"),
        ("load average", f"{(m.get('load_average') or ['?'])[0]} at the start, {(res.get('load_end') or ['?'])[0]} at the end"),
        ("stage time", tables.fmt_seconds(total)),
    ]
    return [Block("h1", f"TensoRF benchmark report {meta.get('run_id', '')}".strip()), Block("kv", rows)]


def _section_blocks(res: dict, figures: dict[str, bytes]) -> list[Block]:
    rows, quality = res["benchmarks"], res["quality"]
    out: list[Block] = [Block("h2", "What this shows")]
    out.append(Block("list", res["summary"] or ["No results to summarise (every stage failed or was skipped)."]))
    out.append(Block("p", "_Generated from the numbers below; timings on a shared machine are noisy, see the load "
                          "average in the header._"))

    out.append(Block("h2", "Quality and speed of the compared configurations"))
    out.append(Block("table", tables.quality_table(quality)))
    for key, cap in (("psnr_time", "Training-batch PSNR against wall-clock (each run's budget clock)."),
                     ("quality_speed", "Mean test PSNR against training throughput."),
                     ("per_view", "Per-view test PSNR.")):
        if key in figures:
            out.append(Block("figure", key, cap))
    for v in res.get("figure_views", []):
        key = f"view_{v.get('name')}"
        if key in figures:
            out.append(Block("figure", key, f"Test view {v.get('name')}: render, ground truth and error per run."))
    if res["per_view"]:
        out.append(Block("h3", "Per-view metrics"))
        out.append(Block("table", tables.per_view_table(res["per_view"])))

    groups = dict.fromkeys(r["group"] for r in rows)
    builders = {"framework": tables.framework_table, "vmap": tables.vmap_table,
                "appearance": lambda r: tables.appearance_table(r, quality), "precision": tables.precision_table,
                "compile": tables.compile_table, "memory": tables.memory_table}
    if rows:
        out.append(Block("h2", "Benchmarks"))
        size = next((r.get("size") for r in rows if r.get("size")), "?")
        dev = ", ".join(sorted({str(r.get("device")) for r in rows if r.get("device")}))
        out.append(Block("p", f"pytest-benchmark, size `{size}` (`TENSORF_BENCH_SIZE`), devices: {dev}. Median of the "
                              "rounds; JAX compiled ahead of time outside the timer and blocked on inside it."))
    for g in ("framework", "vmap", "appearance", "precision", "compile", "memory") + tuple(x for x in groups if x not in builders):
        if g not in groups:
            continue
        t = builders[g](rows) if g in builders else tables.generic_table(rows, g)
        out.append(Block("h3", t.title))
        out.append(Block("table", t))
        if f"bench_{g}" in figures:
            out.append(Block("figure", f"bench_{g}", t.title))

    out.append(Block("h2", "Parity"))
    ps = res.get("parity_status")
    if ps is None:
        out.append(Block("p", "The parity stage did not run."))
    elif not ps.get("available", True):
        out.append(Block("p", f"Not available: {ps.get('error') or 'no `tensorf-bench parity` command in this checkout'}."))
    else:
        ps_sum = res.get("parity_summary") or {}
        if ps_sum:
            out.append(Block("p", f"From `tensorf-bench parity`: **{'PASS' if ps_sum.get('ok') else 'FAIL'}**, "
                                  f"{ps_sum.get('comparisons_passed')} of {ps_sum.get('comparisons')} comparisons within "
                                  f"tolerance; tests {ps_sum.get('tests_passed')} passed, {ps_sum.get('tests_failed')} failed, "
                                  f"{ps_sum.get('tests_xfailed')} known gaps (strict xfail), {ps_sum.get('tests_skipped')} "
                                  f"skipped. Every comparison: `{ps.get('markdown') or 'parity/parity.md'}`."
                                  + (f" This preset runs a subset of the suite (`-k \"{ps['selection']}\"`); the "
                                     "full and gpu presets run all of it." if ps.get("selection") else "")))
        elif ps["status"] != "ok":
            out.append(Block("p", f"Parity stage {ps['status']}: {ps.get('error') or ''}"))
        if res["parity"]:
            out.append(Block("table", tables.parity_table(res["parity"])))
            bad = [c for c in res["parity"] if not c.get("passed")]
            if bad:
                out.append(Block("h3", "Comparisons outside their tolerance"))
                out.append(Block("table", tables.parity_rows_table(bad)))
        if res.get("parity_gaps"):
            out.append(Block("list", [f"`{o.get('test')}` ({'known gap' if o.get('xfail') else o.get('outcome')}): "
                                      f"{o.get('reason') or ''}" for o in res["parity_gaps"]]))

    if res["problems"]:
        out.append(Block("h2", "Failed and skipped"))
        out.append(Block("table", tables.problems_table(res["problems"])))
    out.append(Block("h2", "Stages"))
    out.append(Block("table", tables.stages_table(res["stages"])))
    return out


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def make_figures(res: dict, run_dir: Path) -> dict[str, bytes]:
    figs: dict[str, Optional[bytes]] = {}
    rows = res["benchmarks"]
    budget = next((q.get("budget_s") for q in res["quality"] if q.get("budget_s")), None)
    figs["psnr_time"] = plots.psnr_time_plot({k: v for k, v in res["curves"].items()}, budget)
    figs["quality_speed"] = plots.quality_speed_plot(res["quality"])
    figs["per_view"] = plots.per_view_plot(res["per_view"])
    figs["bench_vmap"] = plots.grouped_bars([r for r in rows if r["group"] == "vmap"], "mode", "variant", "throughput",
                                            "Grid lookup throughput per vmap variant", "rays/s")
    figs["bench_appearance"] = plots.grouped_bars([r for r in rows if r["group"] == "appearance"], "workload", "label",
                                                  "throughput", "Throughput per appearance strategy", "rays/s")
    figs["bench_framework"] = plots.grouped_bars([r for r in rows if r["group"] == "framework"], "workload", "impl",
                                                 "median_s", "Same work in JAX and torch (lower is faster)",
                                                 "seconds per call", log=True)
    figs["bench_precision"] = plots.grouped_bars([r for r in rows if r["group"] == "precision"], "workload", "dtype",
                                                 "median_s", "Precision policies (lower is faster)", "seconds per call")
    figs["bench_compile"] = plots.compile_plot([r for r in rows if r["group"] == "compile"])
    for v in res.get("figure_views", []):
        gt = plots.read_rgb(run_dir / v["gt"]) if v.get("gt") else None
        if gt is None:
            continue
        renders = {}
        for q in res["quality"]:
            rec, _ = res["_runs"].get(q["name"], (None, None))
            eval_dir = rec.data.get("eval_dir") if rec is not None else None
            if eval_dir:
                img = plots.read_rgb(run_dir / eval_dir / f"{v['name']}.png")
                if img is not None:
                    renders[q["label"]] = img
        figs[f"view_{v['name']}"] = plots.comparison_figure(v["name"], gt, renders)
    return {k: v for k, v in figs.items() if v}


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _inline_html(text: str) -> str:
    t = html.escape(str(text))
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)
    t = re.sub(r"(?<![\w*])_([^_]+)_(?![\w*])", r"<em>\1</em>", t)
    return t


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.content + "\n")
        elif b.kind == "p":
            out.append(b.content + "\n")
        elif b.kind == "list":
            out.append("\n".join(f"- {x}" for x in b.content) + "\n")
        elif b.kind == "kv":
            out.append("\n".join(f"- **{k}**: {v}" for k, v in b.content) + "\n")
        elif b.kind == "table":
            t = b.content
            out.append(t.to_markdown() + (f"\n_{t.note}_\n" if t.note and not t.empty else ""))
        elif b.kind == "figure":
            out.append(f"![{b.extra}](figures/{b.content}.png)\n")
        elif b.kind == "pre":
            out.append(b.content.rstrip() + "\n")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f3f3f3} tr:nth-child(even) td{background:#fafafa}
code{background:#f3f3f3;padding:0 3px;border-radius:3px}
img{max-width:100%;margin:.4em 0} figure{margin:0 0 1.2em} figcaption{font-size:12px;color:#555}
pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:12px}
.note{font-size:12px;color:#555}
"""


def render_html(blocks: list[Block], figures: dict[str, bytes], title: str) -> str:
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
           f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{_inline_html(b.content)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{_inline_html(b.content)}</p>")
        elif b.kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline_html(x)}</li>" for x in b.content) + "</ul>")
        elif b.kind == "kv":
            out.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_inline_html(v)}</td></tr>"
                                           for k, v in b.content) + "</table>")
        elif b.kind == "table":
            t = b.content
            out.append(t.to_html())
            if t.note and not t.empty:
                out.append(f"<p class='note'>{_inline_html(t.note)}</p>")
        elif b.kind == "figure":
            data = base64.b64encode(figures[b.content]).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(str(b.extra))}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{_inline_html(b.extra)}</figcaption></figure>")
        elif b.kind == "pre":
            out.append(f"<pre>{html.escape(b.content)}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    df = pd.DataFrame([{k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()} for r in rows])
    return df.to_csv(index=False)


def build_report(run_dir, load_end: Optional[Sequence[float]] = None) -> dict[str, Path]:
    """Write the report files of RUN_DIR; returns their paths by kind."""
    run_dir = Path(run_dir)
    res = collect(run_dir, load_end)
    figures = make_figures(res, run_dir)
    blocks = _header(res) + _section_blocks(res, figures)
    paths: dict[str, Path] = {}
    for name, png in figures.items():
        paths[f"figure:{name}"] = write_bytes(run_dir / "figures" / f"{name}.png", png)
    paths["markdown"] = write_text(run_dir / "index.md", render_markdown(blocks))
    title = f"TensoRF benchmark report {res['meta'].get('run_id', '')}".strip()
    paths["html"] = write_text(run_dir / "index.html", render_html(blocks, figures, title))
    public = {k: v for k, v in res.items() if not k.startswith("_")}
    public["built"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    paths["json"] = atomic_write_json(run_dir / "results.json", public)
    for name, rows in (("benchmarks", res["benchmarks"]), ("quality", res["quality"]), ("per_view", res["per_view"])):
        text = _csv(rows)
        if text:
            paths[f"csv:{name}"] = write_text(run_dir / f"{name}.csv", text)
    return paths
