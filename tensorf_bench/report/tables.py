"""Report tables: pandas frames of numbers, the best value of each column in bold, rendered as
markdown and HTML.

A :class:`Table` holds the numeric frame (for CSV and for finding the best value), the displayed
strings and a boolean frame saying which cells are bold. "Best" is per column and per block of
comparable rows (e.g. per workload): the largest throughput, the smallest time or memory, the
largest PSNR / SSIM, the smallest LPIPS.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import pandas as pd

# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def _finite(x: Any) -> bool:
    try:
        return x is not None and not isinstance(x, bool) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt_seconds(s: Any) -> str:
    if not _finite(s):
        return "–"
    s = float(s)
    if s == 0:
        return "0 s"
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def fmt_bytes(b: Any) -> str:
    if not _finite(b):
        return "–"
    b = float(b)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def fmt_rate(x: Any) -> str:
    if not _finite(x):
        return "–"
    x = float(x)
    if x >= 1e9:
        return f"{x / 1e9:.3g}G"
    if x >= 1e6:
        return f"{x / 1e6:.3g}M"
    if x >= 1e3:
        return f"{x / 1e3:.3g}k"
    return f"{x:.3g}"


def fmt_ratio(x: Any) -> str:
    return f"{float(x):.2f}×" if _finite(x) else "–"


def fmt_float(digits: int) -> Callable[[Any], str]:
    def f(x: Any) -> str:
        return f"{float(x):.{digits}f}" if _finite(x) else "–"

    return f


def fmt_int(x: Any) -> str:
    return f"{int(x):,}" if _finite(x) else "–"


def fmt_text(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return str(x)


# ---------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------


@dataclass
class Column:
    key: str
    """Column of the numeric frame."""
    title: str
    fmt: Callable[[Any], str] = fmt_text
    best: Optional[str] = None
    """"max", "min" or None (not compared)."""


@dataclass
class Table:
    title: str
    numbers: pd.DataFrame
    """One row per table row, the columns' keys (numbers and labels)."""
    columns: list[Column]
    block: Optional[list[str]] = None
    """Keys whose equal values form a block of comparable rows (best is found per block)."""
    note: str = ""
    shown: pd.DataFrame = field(init=False)
    bold: pd.DataFrame = field(init=False)

    def __post_init__(self) -> None:
        df = self.numbers.reset_index(drop=True)
        if self.block and not df.empty and all(k in df.columns for k in self.block):
            # comparable rows together, blocks in order of first appearance (stable within a block)
            key = df[self.block].astype(str).agg("\x1f".join, axis=1)
            first = {k: i for i, k in reversed(list(enumerate(key)))}
            df = df.iloc[sorted(range(len(df)), key=lambda i: (first[key.iloc[i]], i))].reset_index(drop=True)
        self.numbers = df
        for c in self.columns:
            if c.key not in df.columns:
                df[c.key] = None
        self.shown = pd.DataFrame({c.title: [c.fmt(v) for v in df[c.key]] for c in self.columns}, index=df.index)
        self.bold = pd.DataFrame(False, index=df.index, columns=[c.title for c in self.columns])
        self.bold = mark_best(df, self.columns, self.block)

    @property
    def empty(self) -> bool:
        return self.numbers.empty

    def to_markdown(self) -> str:
        return render_markdown(self.shown, self.bold)

    def to_html(self) -> str:
        return render_html(self.shown, self.bold)


def mark_best(df: pd.DataFrame, columns: Sequence[Column], block: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """A boolean frame (titles as columns): True where a cell holds the best value of its column
    within its block. Ties are all bold; a block with fewer than two numbers has no best."""
    bold = pd.DataFrame(False, index=df.index, columns=[c.title for c in columns])
    if df.empty:
        return bold
    keys = list(block or [])
    groups = [(None, df)] if not keys else list(df.groupby([df[k].astype(str) for k in keys], sort=False))
    for c in columns:
        if c.best not in ("max", "min"):
            continue
        for _, g in groups:
            vals = pd.to_numeric(g[c.key], errors="coerce")
            vals = vals[vals.map(lambda v: _finite(v))]
            if len(vals) < 2 or vals.nunique() < 2:
                continue  # nothing to compare, or all equal
            target = vals.max() if c.best == "max" else vals.min()
            for idx in vals.index[vals == target]:
                bold.loc[idx, c.title] = True
    return bold


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(shown: pd.DataFrame, bold: Optional[pd.DataFrame] = None) -> str:
    """A GitHub-flavoured markdown table; bold cells as ``**x**``."""
    if shown.empty:
        return "_(none)_\n"
    cols = list(shown.columns)
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for i in shown.index:
        cells = []
        for c in cols:
            t = _md_cell(shown.at[i, c])
            if bold is not None and bool(bold.at[i, c]) and t not in ("–", ""):
                t = f"**{t}**"
            cells.append(t)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_html(shown: pd.DataFrame, bold: Optional[pd.DataFrame] = None) -> str:
    if shown.empty:
        return "<p><em>(none)</em></p>"
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns) + "</tr></thead>", "<tbody>"]
    for i in shown.index:
        cells = []
        for c in shown.columns:
            t = html.escape(str(shown.at[i, c]))
            if bold is not None and bool(bold.at[i, c]) and t not in ("–", ""):
                t = f"<b>{t}</b>"
            cells.append(f"<td>{t}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# The report's tables
# ---------------------------------------------------------------------------------------------


def _frame(rows: list[dict], group: Optional[str] = None) -> pd.DataFrame:
    rows = [r for r in rows if group is None or r.get("group") == group]
    return pd.DataFrame(rows)


def _ratio_to(df: pd.DataFrame, block: list[str], is_base, value: str = "median_s") -> pd.Series:
    """``base time / time`` per row, the base being the row of its block where ``is_base(row)``."""
    out = pd.Series([math.nan] * len(df), index=df.index, dtype=float)
    if df.empty:
        return out
    keys = [df[k].astype(str) for k in block] if block else [pd.Series(["all"] * len(df), index=df.index)]
    for _, g in df.groupby(keys, sort=False):
        base = g[g.apply(is_base, axis=1)]
        if base.empty:
            continue
        b = float(base.iloc[0][value])
        for i in g.index:
            v = df.at[i, value]
            if _finite(v) and float(v) > 0 and _finite(b):
                out[i] = b / float(v)
    return out


def _throughput_col(df: pd.DataFrame) -> Column:
    unit = "rays/s"
    if not df.empty and "throughput_unit" in df and df["throughput_unit"].notna().any():
        units = list(dict.fromkeys(df["throughput_unit"].dropna()))
        if len(units) == 1:
            unit = units[0]
        else:
            other = ", ".join(f"{u} for {', '.join(sorted(set(df.loc[df['throughput_unit'] == u, 'workload'].astype(str))))}"
                              for u in units[1:])
            unit = f"{units[0]} ({other})"
    return Column("throughput", unit, fmt_rate, "max")


def vmap_table(rows: list[dict]) -> Table:
    df = _frame(rows, "vmap")
    if not df.empty:
        df["vs_flat"] = _ratio_to(df, ["mode"], lambda r: r.get("variant") == "flat")
    return Table(
        "vmap variants of the grid lookup (training shapes)",
        df,
        [Column("variant", "variant"), Column("mode", "mode"), Column("points", "points", fmt_int),
         Column("median_s", "median", fmt_seconds, "min"), _throughput_col(df),
         Column("vs_flat", "speed-up vs flat", fmt_ratio, "max"), Column("compile_s", "compile", fmt_seconds, "min")],
        block=["mode"],
        note="Best per mode in bold. Rays/s counts the training rays whose samples were looked up.",
    )


def appearance_table(rows: list[dict], quality: Optional[list[dict]] = None) -> Table:
    df = _frame(rows, "appearance")
    if not df.empty:
        df["vs_all"] = _ratio_to(df, ["workload"], lambda r: r.get("appearance") == "all")
        q = {(r.get("appearance"), r.get("k")): r for r in (quality or []) if r.get("framework") == "jax"
             and r.get("precision", "fp32") == "fp32" and r.get("status") == "ok"}
        psnr = []
        for _, r in df.iterrows():
            k = r.get("k")
            k = None if not _finite(k) else int(k)
            hit = q.get((r.get("appearance"), k))
            psnr.append(hit.get("psnr") if hit else None)
        df["quality_psnr"] = psnr
    return Table(
        "Appearance strategies: train step and evaluation render",
        df,
        [Column("workload", "workload"), Column("label", "strategy"), Column("rays", "rays", fmt_int),
         Column("median_s", "median", fmt_seconds, "min"), _throughput_col(df),
         Column("vs_all", "speed-up vs all", fmt_ratio, "max"), Column("compile_s", "compile", fmt_seconds, "min"),
         Column("quality_psnr", "test PSNR of its quality run", fmt_float(2), "max")],
        block=["workload"],
        note="Best per workload in bold. The last column is the mean test PSNR of the quality run trained "
        "with that strategy (same budget), where the report has one.",
    )


def precision_table(rows: list[dict]) -> Table:
    df = _frame(rows, "precision")
    if not df.empty:
        df["vs_fp32"] = _ratio_to(df, ["workload"], lambda r: r.get("dtype") == "fp32")
    return Table(
        "Precision policies",
        df,
        [Column("workload", "workload"), Column("dtype", "precision"), Column("median_s", "median", fmt_seconds, "min"),
         _throughput_col(df), Column("vs_fp32", "speed-up vs fp32", fmt_ratio, "max"),
         Column("max_abs_vs_fp32", "max |Δ| vs fp32", lambda v: f"{float(v):.2g}" if _finite(v) else "–"),
         Column("compile_s", "compile", fmt_seconds, "min")],
        block=["workload"],
        note="Best per workload in bold. The train-step difference is that of the first step's loss.",
    )


def framework_table(rows: list[dict]) -> Table:
    df = _frame(rows, "framework")
    if not df.empty:
        df["vs_torch"] = _ratio_to(df, ["workload"], lambda r: r.get("impl") == "torch-eager")
    return Table(
        "JAX against the torch reference: the same work",
        df,
        [Column("workload", "workload"), Column("impl", "implementation"), Column("device", "device"),
         Column("median_s", "median", fmt_seconds, "min"), _throughput_col(df),
         Column("vs_torch", "speed-up vs torch eager", fmt_ratio, "max"), Column("compile_s", "compile", fmt_seconds)],
        block=["workload"],
        note="Same parameters, inputs and dtype on both sides, appearance for every sample inside the box "
        "(torch selects them by mask, JAX compacts them into a capacity as its trainer does); the outputs "
        "agree to 1e-4 (checked by the benchmark). Best per workload in bold.",
    )


def compile_table(rows: list[dict]) -> Table:
    df = _frame(rows, "compile")
    return Table(
        "JAX compile time per grid size",
        df,
        [Column("workload", "workload"), Column("grid", "grid"), Column("samples_per_ray", "samples/ray", fmt_int),
         Column("lower_s", "lower", fmt_seconds), Column("compile_s", "XLA compile", fmt_seconds, "min"),
         Column("temp_bytes", "temp memory (compiled)", fmt_bytes, "min")],
        block=["workload"],
        note="A fresh function per measurement (nothing cached).",
    )


def memory_table(rows: list[dict]) -> Table:
    df = _frame(rows, "memory")
    if not df.empty and "peak_rss_bytes" in df and "rss_before_bytes" in df:
        df["delta"] = pd.to_numeric(df["peak_rss_bytes"], errors="coerce") - pd.to_numeric(df["rss_before_bytes"], errors="coerce")
    return Table(
        "Peak memory (fresh process per measurement)",
        df,
        [Column("workload", "workload"), Column("framework", "framework"), Column("device", "device"),
         Column("peak_rss_bytes", "peak RSS", fmt_bytes, "min"), Column("delta", "RSS growth while running", fmt_bytes, "min"),
         Column("temp_bytes", "XLA temp (compiled)", fmt_bytes), Column("peak_estimate_bytes", "XLA peak estimate", fmt_bytes),
         Column("cuda_peak_bytes", "CUDA peak", fmt_bytes, "min"), Column("device_peak_bytes", "device peak", fmt_bytes, "min")],
        block=["workload"],
        note="RSS is the whole process (interpreter, libraries, inputs, compiled code); its growth from "
        "before the first run to the peak of the runs is what running the workload needs.",
    )


def generic_table(rows: list[dict], group: str) -> Table:
    df = _frame(rows, group)
    return Table(f"Group {group}", df,
                 [Column("label", "benchmark"), Column("workload", "workload"),
                  Column("median_s", "median", fmt_seconds, "min"), _throughput_col(df)], block=["workload"])


def fmt_compiles(n: Any, seconds: Any) -> str:
    """``count (total seconds)``; ``0`` for a run that compiled nothing (torch), ``–`` when not recorded."""
    if not _finite(n):
        return "–"
    return f"{int(n)} ({fmt_seconds(seconds)})" if int(n) else "0"


def quality_table(rows: list[dict]) -> Table:
    df = pd.DataFrame(rows)
    for key in ("rays_per_s", "compile_seconds", "n_compiles", "time_to_first_step"):
        if key not in df.columns:
            df[key] = None
    if not df.empty:
        torch_rate = None
        for r in rows:
            if r.get("framework") == "torch" and _finite(r.get("rays_per_s")):
                torch_rate = float(r["rays_per_s"])
        df["vs_torch"] = [float(r) / torch_rate if torch_rate and _finite(r) else None for r in df["rays_per_s"]]
        df["compiles"] = [fmt_compiles(n, s) for n, s in zip(df["n_compiles"], df["compile_seconds"])]
    return Table(
        "Quality under the same wall-clock budget (test views)",
        df,
        [Column("label", "configuration"), Column("status", "status"),
         Column("psnr", "PSNR ↑", fmt_float(2), "max"), Column("ssim", "SSIM ↑", fmt_float(4), "max"),
         Column("lpips_alex", "LPIPS-alex ↓", fmt_float(4), "min"), Column("lpips_vgg", "LPIPS-vgg ↓", fmt_float(4), "min"),
         Column("steps", "steps", fmt_int, "max"), Column("rays_per_s", "train rays/s", fmt_rate, "max"),
         Column("vs_torch", "speed-up vs torch", fmt_ratio, "max"), Column("train_seconds", "trained", fmt_seconds),
         Column("time_to_first_step", "time to first step", fmt_seconds), Column("compiles", "compiles"),
         Column("grid_size", "final grid"),
         Column("peak_rss_bytes", "peak RSS", fmt_bytes, "min")]
        + ([Column("device_peak_bytes", "GPU peak", fmt_bytes, "min")]
           if any(_finite(r.get("device_peak_bytes")) for r in rows) else []),
        note="Every run: same data, batches, seed and budget; only the appearance strategy (or the framework) "
        "differs. Train rays/s excludes compilation and set-up; the budget includes them (JAX compiles "
        "count against it). Time to first step: until the first training step ended, set-up and the first "
        "compilation included. Compiles: how many, and their seconds in all. Evaluation uses the official "
        "threshold renderer for every run.",
    )


def per_view_table(rows: list[dict]) -> Table:
    df = pd.DataFrame(rows)
    return Table("Per-view metrics", df,
                 [Column("view", "view"), Column("run", "run"), Column("psnr", "PSNR", fmt_float(2), "max"),
                  Column("ssim", "SSIM", fmt_float(4), "max"), Column("lpips_alex", "LPIPS-alex", fmt_float(4), "min"),
                  Column("lpips_vgg", "LPIPS-vgg", fmt_float(4), "min")], block=["view"])


def problems_table(rows: list[dict]) -> Table:
    return Table("Failed and skipped", pd.DataFrame(rows),
                 [Column("what", "stage / benchmark"), Column("outcome", "outcome"), Column("error", "error")])


def parity_table(comparisons: list[dict]) -> Table:
    """One row per twin module (the component name's first part), from ``tensorf-bench parity``'s
    comparisons: how many, the largest max-abs error, the worst error in units of its bound, pass."""
    rows = []
    groups: dict[str, list[dict]] = {}
    for c in comparisons:
        groups.setdefault(str(c.get("component", "?")).split(".")[0], []).append(c)
    for name, cs in groups.items():
        counted = [c for c in cs if not c.get("known_gap")]
        errs = [c.get("max_abs") for c in counted]
        scaled = [c.get("scaled") for c in counted]
        rows.append({
            "module": name,
            "comparisons": len(cs),
            "known_gaps": len(cs) - len(counted),
            "max_abs": max((float(e) for e in errs if _finite(e)), default=None) if all(_finite(e) for e in errs) else math.inf,
            "scaled": max((float(v) for v in scaled if _finite(v)), default=None) if all(_finite(v) for v in scaled) else math.inf,
            "passed": all(bool(c.get("passed")) for c in counted),
        })
    sci = lambda v: ("inf" if v == math.inf else f"{float(v):.2g}") if v is not None else "–"  # noqa: E731
    return Table("Parity (JAX vs the torch reference, by module)", pd.DataFrame(rows),
                 [Column("module", "module"), Column("comparisons", "comparisons", fmt_int),
                  Column("known_gaps", "known gaps", fmt_int), Column("max_abs", "largest max-abs error", sci),
                  Column("scaled", "worst error / tolerance", sci),
                  Column("passed", "pass", lambda v: "yes" if v is True else ("NO" if v is False else fmt_text(v)))],
                 note="Known gaps are comparisons inside strict-xfail tests (documented twin differences).")


def parity_rows_table(comparisons: list[dict]) -> Table:
    return Table("Comparisons outside their tolerance", pd.DataFrame(comparisons),
                 [Column("component", "component"), Column("max_abs", "max-abs", lambda v: f"{float(v):.2g}" if _finite(v) else "inf"),
                  Column("tolerance", "tolerance"), Column("known_gap", "known gap", lambda v: "yes" if v else "no"),
                  Column("test", "test")])


def stages_table(rows: list[dict]) -> Table:
    return Table("Stages", pd.DataFrame(rows),
                 [Column("name", "stage"), Column("status", "status"), Column("seconds", "time", fmt_seconds),
                  Column("error", "error")])
