"""Report figures with matplotlib (object API and the Agg canvas: no display, no pyplot state).

Each function returns PNG bytes, or None when there is nothing to plot.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD"]


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _ok(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def grouped_bars(rows: Sequence[dict], group_key: str, bar_key: str, value_key: str, title: str, ylabel: str,
                 log: bool = False) -> Optional[bytes]:
    """Bars of ``value_key`` for each ``bar_key`` within each ``group_key`` (missing values left out)."""
    rows = [r for r in rows if _ok(r.get(value_key))]
    if not rows:
        return None
    groups = list(dict.fromkeys(str(r.get(group_key)) for r in rows))
    bars = list(dict.fromkeys(str(r.get(bar_key)) for r in rows))
    fig = _figure(max(5.0, 0.6 * len(groups) * len(bars) + 2), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(bars))
    for j, b in enumerate(bars):
        xs, ys = [], []
        for i, g in enumerate(groups):
            vals = [float(r[value_key]) for r in rows if str(r.get(group_key)) == g and str(r.get(bar_key)) == b]
            if vals:
                xs.append(i + (j - (len(bars) - 1) / 2) * width)
                ys.append(vals[0])
        ax.bar(xs, ys, width=width * 0.95, label=b, color=COLORS[j % len(COLORS)])
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, len(bars)))
    return _png(fig)


def compile_plot(rows: Sequence[dict]) -> Optional[bytes]:
    rows = [r for r in rows if _ok(r.get("compile_s")) and r.get("grid_size")]
    if not rows:
        return None
    fig = _figure(5.5, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    for j, w in enumerate(dict.fromkeys(r.get("workload") for r in rows)):
        pts = sorted((int(np.prod(r["grid_size"])) ** (1 / 3), float(r["compile_s"]), float(r.get("lower_s") or 0))
                     for r in rows if r.get("workload") == w)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=COLORS[j], label=f"{w} (XLA compile)")
        ax.plot([p[0] for p in pts], [p[2] for p in pts], "x--", color=COLORS[j], alpha=0.6, label=f"{w} (lowering)")
    ax.set_xlabel("grid (voxels per axis)")
    ax.set_ylabel("seconds")
    ax.set_title("JAX compile time per grid size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def psnr_time_plot(curves: dict[str, Sequence[tuple]], budget_s: Optional[float] = None) -> Optional[bytes]:
    """Training-batch PSNR against wall-clock seconds, one line per run."""
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    fig = _figure(6.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    for j, (name, pts) in enumerate(curves.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", marker=".", color=COLORS[j % len(COLORS)], label=name)
    if budget_s:
        ax.axvline(budget_s, color="k", lw=0.8, ls=":", label="budget")
    ax.set_xlabel("wall-clock seconds (budget clock: set-up and compilation included)")
    ax.set_ylabel("training-batch PSNR (dB)")
    ax.set_title("PSNR against wall-clock")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def quality_speed_plot(rows: Sequence[dict]) -> Optional[bytes]:
    rows = [r for r in rows if _ok(r.get("psnr")) and _ok(r.get("rays_per_s"))]
    if not rows:
        return None
    fig = _figure(5.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    for j, r in enumerate(rows):
        ax.scatter([float(r["rays_per_s"])], [float(r["psnr"])], s=60, color=COLORS[j % len(COLORS)], label=r.get("label"))
        ax.annotate(str(r.get("label")), (float(r["rays_per_s"]), float(r["psnr"])), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xlabel("training rays/s (compilation excluded)")
    ax.set_ylabel("mean test PSNR (dB)")
    ax.set_title("Quality against speed (same budget)")
    ax.grid(alpha=0.3)
    return _png(fig)


def per_view_plot(rows: Sequence[dict], metric: str = "psnr") -> Optional[bytes]:
    rows = [r for r in rows if _ok(r.get(metric))]
    if not rows:
        return None
    views = list(dict.fromkeys(r["view"] for r in rows))
    fig = _figure(max(5.0, 0.5 * len(views) + 3), 3.5)
    ax = fig.add_subplot(1, 1, 1)
    for j, run in enumerate(dict.fromkeys(r["run"] for r in rows)):
        pts = [(views.index(r["view"]), float(r[metric])) for r in rows if r["run"] == run]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=COLORS[j % len(COLORS)], label=run)
    ax.set_xticks(range(len(views)))
    ax.set_xticklabels(views, rotation=45, fontsize=8)
    ax.set_ylabel(metric.upper() if metric == "psnr" else metric)
    ax.set_title(f"Per-view {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def read_rgb(path: Path) -> Optional[np.ndarray]:
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        return None
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def comparison_figure(view: str, gt: np.ndarray, renders: dict[str, np.ndarray]) -> Optional[bytes]:
    """One row per run: render, ground truth, absolute error (mean over channels, 0..0.5 scale)."""
    renders = {k: v for k, v in renders.items() if v is not None and v.shape == gt.shape}
    if gt is None or not renders:
        return None
    n = len(renders)
    h, w = gt.shape[:2]
    cell = 2.4
    fig = _figure(3 * cell, n * cell * h / w + 0.4)
    for i, (name, img) in enumerate(renders.items()):
        err = np.abs(img - gt).mean(-1)
        psnr = -10 * math.log10(max(float(np.mean((img - gt) ** 2)), 1e-12))
        for j, (im, title, kw) in enumerate(((img, f"{name}\n{psnr:.2f} dB (8-bit)", {}), (gt, "ground truth", {}),
                                              (err, "|error|", {"cmap": "magma", "vmin": 0, "vmax": 0.5}))):
            ax = fig.add_subplot(n, 3, 3 * i + j + 1)
            ax.imshow(np.clip(im, 0, 1) if im.ndim == 3 else im, **kw)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"test view {view}", fontsize=9)
    return _png(fig)
